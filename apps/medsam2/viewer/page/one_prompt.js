// One prompt, other studies: a saved structure segments the same structure in other studies
// (a run on the server, lib/one_prompt_runs.py), or in the patient's follow-up. The clinician
// opens each result, least sure first: Accept saves it (as corrected with any tool) as the final
// label; Reject drops it. Nothing is saved without Accept.

import { cancelRun, fetchVolume, followUps, readRun, rejectResult, runMask, startFollowUp, startOnePrompt } from './api.js';
import { sliceAfter, sliceMaskField } from './brush.js';
import { keepUnderManualEdits } from './editing.js';
import { LabelVolume, Mask, labelHeader } from './labelmap.js';
import { $, clientId, hooks, labelValue, promptsOf, setStatus, showError, state, studyName, view } from './page.js';
import { saveStructures } from './saving.js';
import { VolumeView } from './view.js';

const STATE_WORDS = { waiting: 'waiting', segmenting: 'segmenting…', ready: 'to review', accepted: 'accepted',
  rejected: 'rejected', failed: 'failed', skipped: 'skipped', cancelled: 'cancelled' };

export const onePrompt = { run: null, reviewing: null, followUps: null, compare: null };
const compareView = new VolumeView($('compare-image'));
let polling = null;

const running = () => onePrompt.run?.state === 'running';
const savedHere = () => Boolean(state.image && state.saved.has(state.label) && state.savedShown.has(state.label));

// the buttons as what is open allows
export function refreshOnePrompt() {
  $('op-use').disabled = !savedHere() || running();
  const next = onePrompt.followUps?.image === state.image ? onePrompt.followUps.later[0] : null;
  $('op-follow-up').disabled = !savedHere() || running() || !next;
  $('op-follow-up').textContent = next ? `Carry to follow-up (${formatDate(next.date)})` : 'Carry to follow-up';
  const reviewing = onePrompt.reviewing?.image === state.image ? onePrompt.reviewing : null;
  $('op-review').hidden = !reviewing;
  if (reviewing) showComparison();
}

// a study was opened: what its patient's later studies are; a review of another study ends
export async function studyOpened(image) {
  if (onePrompt.reviewing && onePrompt.reviewing.image !== image) endReview();
  onePrompt.followUps = null;
  refreshOnePrompt();
  try {
    const answer = await followUps(image);
    if (state.image === image) onePrompt.followUps = { image, ...answer };
  } catch (error) {
    console.warn('follow-ups:', error.message);
  }
  refreshOnePrompt();
}

$('op-use').addEventListener('click', () => {
  const list = $('op-targets');
  list.replaceChildren(...state.studies.filter((s) => s.image !== state.image).map((s) => {
    const item = document.createElement('li');
    const box = Object.assign(document.createElement('input'), { type: 'checkbox', value: s.image, checked: !s.final });
    item.append(Object.assign(document.createElement('label'), { textContent: ` ${studyName(s.image)}` }));
    item.firstChild.prepend(box);
    return item;
  }));
  $('op-choose').hidden = false;
});
$('op-close').addEventListener('click', () => { $('op-choose').hidden = true; });

$('op-start').addEventListener('click', async () => {
  const every = document.querySelector('input[name=op-targets]:checked').value === 'unlabelled';
  const targets = every ? 'unlabelled' : [...$('op-targets').querySelectorAll('input:checked')].map((b) => b.value);
  if (!every && !targets.length) { setStatus('Tick at least one study to segment.', 'error'); return; }
  $('op-choose').hidden = true;
  await begin(() => startOnePrompt({ support: state.image, label: state.label, targets }));
});

$('op-follow-up').addEventListener('click', async () => {
  const earlier = { image: state.image, label: state.label, date: onePrompt.followUps?.date,
    mask: state.saved.get(state.label) };
  onePrompt.compare = earlier;
  await begin(() => startFollowUp({ image: state.image, label: state.label }));
});

$('op-cancel').addEventListener('click', async () => {
  if (!onePrompt.run) return;
  try {
    await cancelRun(onePrompt.run.id);
    setStatus('One-prompt segmentation: stopping at the next slice; results so far stay to review.');
  } catch (error) {
    showError(error);
  }
});

async function begin(start) {
  try {
    onePrompt.run = await start();
  } catch (error) {
    showError(error);
    return;
  }
  if (onePrompt.run.kind !== 'follow-up') onePrompt.compare = null;
  render();
  clearInterval(polling);
  polling = setInterval(follow, 1000);
}

async function follow() {
  const before = onePrompt.run;
  try {
    onePrompt.run = await readRun(before.id);
  } catch (error) {
    clearInterval(polling);
    showError(error);
    return;
  }
  render();
  if (onePrompt.run.state === 'running') return;
  clearInterval(polling);
  const ready = onePrompt.run.targets.filter((t) => t.state === 'ready');
  setStatus(`One-prompt segmentation ${onePrompt.run.state === 'cancelled' ? 'cancelled' : 'done'}: `
    + `${ready.length} result(s) to review, least sure first.`);
  if (onePrompt.run.kind === 'follow-up' && ready.length) await review(ready[0].image);
}

function render() {
  const run = onePrompt.run;
  const { done, total, seconds_left: left } = run.progress;
  $('op-bar').hidden = run.state !== 'running';
  $('op-bar').max = total;
  $('op-bar').value = done;
  $('op-cancel').hidden = run.state !== 'running';
  const from = `${run.label} from ${studyName(run.support)}`;
  $('op-progress').textContent = run.state === 'running'
    ? `Segmenting ${from}: ${done} of ${total} studies${left != null ? `, about ${formatSeconds(left)} left` : ''}…`
    : `${from}: ${run.state}${run.error ? ` (${run.error})` : ''}.`;
  $('op-results').replaceChildren(...run.targets.map((t) => {
    const item = document.createElement('li');
    item.dataset.image = t.image;
    item.dataset.state = t.state;
    const sure = t.confidence != null ? `, model's confidence ${t.confidence.toFixed(2)}` : '';
    const changed = t.state === 'accepted' && t.corrected != null ? (t.corrected ? ', corrected' : ', as segmented') : '';
    item.textContent = `${studyName(t.image)}: ${STATE_WORDS[t.state] || t.state}${sure}${changed}`
      + `${t.found === false ? ' (nothing found)' : ''}${t.note ? ` - ${t.note}` : ''}`;
    if (t.state === 'ready') item.addEventListener('click', () => review(t.image));
    if (onePrompt.reviewing?.image === t.image) item.classList.add('selected');
    return item;
  }));
  refreshOnePrompt();
}

// Open a result: the study, its saved structures, and the result as the structure on screen. Its
// largest slice is the structure's starting mask, so prompts and the brush correct it from there.
async function review(image) {
  const run = onePrompt.run;
  await hooks.openStudy(image);
  if (state.image !== image) return;
  let mask;
  try {
    mask = await runMask(run.id, image);
  } catch (error) {
    showError(error);
    return;
  }
  const label = run.label;
  state.label = label;
  const value = labelValue(label);
  const prompts = promptsOf(label);
  prompts.clear();
  state.shown.setWhole(value, new Mask(mask.header, mask.voxels, mask.dims));
  state.savedShown.delete(label);
  keepUnderManualEdits(label);
  const k = largestSlice(mask);
  const region = mask.count() ? sliceAfter(state.shown, value, { slice: k, add: true, voxels: [] }) : null;
  if (region) prompts.add({ kind: 'slice_mask', slice: k, field: await sliceMaskField(region), from: 'one-prompt' });
  prompts.done = prompts.edits.length;
  view.paint(state.shown);
  onePrompt.reviewing = { run, image, label, target: run.targets.find((t) => t.image === image) };
  hooks.goToSlice(k);
  hooks.refreshPanels();
  render();
  const t = onePrompt.reviewing.target;
  $('op-review-text').textContent = `${label} on ${studyName(image)}: one-prompt's result from ${studyName(run.support)}`
    + ` (model's confidence ${t.confidence?.toFixed(2) ?? '-'}). Correct it with any tool, then Accept to save it as `
    + 'the final label; Reject drops it. Nothing is saved until you accept.';
  setStatus(`${studyName(image)}: one-prompt result shown, not saved.`);
}

$('op-accept').addEventListener('click', async () => {
  const reviewing = onePrompt.reviewing;
  if (!reviewing || state.image !== reviewing.image) return;
  setStatus('Saving…', 'busy');
  try {
    const answer = await saveStructures(state, studyName(reviewing.image), { one_prompt_run: reviewing.run.id });
    const changed = answer.one_prompt?.changed_voxels;
    setStatus(`Accepted: saved as the final label of ${studyName(reviewing.image)} (one-prompt from `
      + `${studyName(reviewing.run.support)}${changed != null ? `, ${changed} voxels changed by you` : ''}).`);
    await afterDecision();
  } catch (error) {
    showError(error);
  }
});

$('op-reject').addEventListener('click', async () => {
  const reviewing = onePrompt.reviewing;
  if (!reviewing) return;
  try {
    await rejectResult(reviewing.run.id, reviewing.image);
  } catch (error) {
    showError(error);
    return;
  }
  promptsOf(reviewing.label).clear();
  hooks.restoreSaved(reviewing.label);
  setStatus(`Rejected: nothing saved for ${studyName(reviewing.image)}.`);
  await afterDecision();
});

async function afterDecision() {
  endReview();
  onePrompt.run = await readRun(onePrompt.run.id).catch(() => onePrompt.run);
  render();
  hooks.studiesChanged();
}

function endReview() {
  onePrompt.reviewing = null;
  $('op-review').hidden = true;
  $('compare').hidden = true;
}

// Follow-up: the earlier study beside the later one, each structure's volume, and the change
async function showComparison() {
  const earlier = onePrompt.compare;
  const reviewing = onePrompt.reviewing;
  if (!earlier || reviewing?.run.kind !== 'follow-up' || reviewing.run.support !== earlier.image) return;
  $('compare').hidden = false;
  if (earlier.shownFor !== earlier.image) {
    earlier.shownFor = earlier.image;
    const study = await fetchVolume(earlier.image, clientId, 'all');
    const header = labelHeader(new Uint8Array(study.buffer, 0, Math.round(new DataView(study.buffer).getFloat32(108, true))));
    compareView.open(study.buffer, { window: study.window, slice: largestSlice(earlier.mask) });
    const labels = new LabelVolume(header, compareView.dims);
    labels.setWhole(labelValue(earlier.label), new Mask(earlier.mask.header, earlier.mask.voxels.slice(), earlier.mask.dims));
    compareView.paint(labels);
    earlier.ml = millilitres(earlier.mask, compareView.image.affine);
  }
  const now = state.masks.get(labelValue(reviewing.label));
  const later = millilitres(now, view.image.affine);
  const change = later - earlier.ml;
  const percent = earlier.ml > 0 ? ` (${change >= 0 ? '+' : ''}${Math.round((100 * change) / earlier.ml)}%)` : '';
  $('compare-name').textContent = `Earlier: ${formatDate(earlier.date)}`;
  $('op-volumes').textContent = `${reviewing.label}: earlier ${earlier.ml.toFixed(2)} mL (${formatDate(earlier.date)}), `
    + `follow-up ${later.toFixed(2)} mL; change ${change >= 0 ? '+' : ''}${change.toFixed(2)} mL${percent}.`;
}

function millilitres(mask, affine) {
  const [a, b, c] = affine.map((row) => row.slice(0, 3));
  const det = a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0]);
  return ((mask?.count() || 0) * Math.abs(det)) / 1000;
}

function largestSlice(mask) {
  const [ni, nj, nk] = mask.dims;
  let best = 0;
  let most = -1;
  for (let k = 0; k < nk; k += 1) {
    let n = 0;
    for (let v = ni * nj * k; v < ni * nj * (k + 1); v += 1) if (mask.voxels[v]) n += 1;
    if (n > most) { most = n; best = k; }
  }
  return best;
}

const formatDate = (date) => (date && /^\d{8}$/.test(date) ? `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6)}` : date || 'date unknown');
const formatSeconds = (s) => (s >= 90 ? `${Math.round(s / 60)} min` : `${Math.max(1, Math.round(s))} s`);

// The annotation page: study list, structures, prompts, the app's masks, save as final.
// What the parts share is in page.js; the lists in lists.js; editing beyond prompts in editing.js.

import { AuthRequired, MODEL, SaveConflict, appInfo, fetchFinal, fetchVolume, listStudies, needsLogIn, segment, sendFocus,
  streamsAnswered } from './api.js';
import { DisplayWindow } from './display.js';
import { keepUnderManualEdits, paintStroke } from './editing.js';
import { LabelVolume, Mask, decodeRegion, labelHeader } from './labelmap.js';
import { renderLabels, renderStudies } from './lists.js';
import { askLogIn } from './login.js';
import { LearningLoop } from './loop.js';
import { OtherPlanes } from './other_planes.js';
import { Cine } from './cine.js';
import { onePrompt, refreshOnePrompt, studyOpened } from './one_prompt.js';
import { $, clientId, hooks, labelValue, marks, promptsOf, setStatus, showError, state, studyName, view } from './page.js';
import { showOverlaps, showResult } from './panels.js';
import { saveStructures } from './saving.js';
import { PromptCanvas } from './tools.js';

function refreshPanels() {
  renderLabels();
  const prompts = state.label ? promptsOf(state.label) : null;
  const open = Boolean(state.image);
  const locked = state.locked.has(state.label);
  $('undo').disabled = !open || !prompts || prompts.isEmpty() || locked;
  $('redo').disabled = !open || !prompts || !prompts.canRedo() || locked;
  $('start-saved').disabled = !open || !state.saved.has(state.label) || locked;
  const starts = state.labels.filter((l) => l !== state.label && state.masks.get(labelValue(l))?.count());
  $('start-structure').replaceChildren(new Option('Start from another structure…', ''),
    ...starts.map((l) => new Option(l, l)));
  $('start-structure').disabled = !open || !starts.length || locked;
  $('clear').disabled = !open || !prompts || (prompts.isEmpty() && !(state.masks.get(labelValue(state.label))?.count()));
  $('save').disabled = !open || ![...state.masks.values()].some((m) => m.count() > 0);
  if (prompts) {
    const box = prompts.box();
    const count = (kind) => prompts.edits.filter((e) => e.kind === kind && e.from !== 'one-prompt').length;
    const drawn = [count('stroke') && `${count('stroke')} scribble(s)`, count('lasso') && `${count('lasso')} outline(s)`,
      count('slice_mask') && `${count('slice_mask')} painted slice(s)`,
      prompts.edits.some((e) => e.from === 'one-prompt') && 'started from the one-prompt result',
      count('paint') && `${count('paint')} manual brush edit(s)`, count('start') && `started from ${prompts.startFile() ? prompts.startFile().name : 'its saved mask'}`].filter(Boolean);
    $('prompt-summary').textContent = `${state.label}: ${prompts.points(true).length} inside, `
      + `${prompts.points(false).length} outside${box ? `, box on slice ${box[4]}` : ''}`
      + `${drawn.length ? `, ${drawn.join(', ')}` : ''}${state.locked.has(state.label) ? ' (locked)' : ''}`;
  }
  renderOverlaps();
  renderResult();
  refreshOnePrompt();
  drawMarks();
}

function renderOverlaps() {
  showOverlaps(state);
}

function renderResult() {
  showResult(state, labelValue(state.label), goToSlice);
}

// "as the model sees it" follows the window of the last result (the app's own choice)
// (before any result: the window the server said the model will use for this study)
const display = new DisplayWindow(view, $('window'),
  () => [...state.results.values()].map((r) => r.window).find((w) => w && w.high > w.low)
    || (state.modelWindowShown ? { low: state.modelWindowShown[0], high: state.modelWindowShown[1] } : null));

// ---- slices and marks ---------------------------------------------------------------------
// the app's slice k (in the plane of the app's slices)
function goToSlice(k) {
  if (view.normal !== 2) view.setPlane(2);
  $('plane').value = '2';
  moveSlice(k);
}

// the shown plane's index along its normal
function moveSlice(index) {
  view.goToSlice(index);
  syncSlice();
}

let focusTimer = null;
function syncSlice() {
  const k = view.currentSlice();
  $('slice').max = view.dims[view.normal] - 1;
  $('slice').value = k;
  $('slice-label').textContent = `${k} / ${view.dims[view.normal] - 1}${cine.at(k)}`;
  drawMarks();
  // where the clinician looks is where the next prompt will be: the server encodes outward from it
  clearTimeout(focusTimer);
  const image = state.image;
  const slice = view.cursor[2];
  focusTimer = setTimeout(() => { if (image) sendFocus(image, clientId, slice).catch(() => {}); }, 300);
}

// a video's frames (cine.js): Play steps through them, looping
const cine = new Cine($('play'), () => moveSlice((view.currentSlice() + 1) % view.dims[2]));

// a prompt begins on this slice: the server encodes it while the box or stroke is drawn, so
// mouse-up waits for the decoder only
function focusNow() {
  cine.pause();
  clearTimeout(focusTimer);
  if (state.image) sendFocus(state.image, clientId, view.cursor[2]).catch(() => {});
}

// The plane shown: the app's slices (k), or the two across them. Prompts go on the app's slices:
// a point or scribble drawn in another plane lands on the slice k of each voxel it touches.
function showPlane(normal) {
  view.setPlane(normal);
  $('plane').value = String(normal);
  syncSlice();
}

// The three-view layout (other_planes.js): the other planes take prompts too; Ctrl+click on one
// moves the cursor there (the main view's slice follows); Ctrl+double click shows that plane in
// the main view.
const others = new OtherPlanes([$('other-a'), $('other-b')], [$('other-a-marks'), $('other-b-marks')],
  (voxel, normal, bring) => {
    view.setPlane(bring ? normal : view.normal, voxel);
    $('plane').value = String(view.normal);
    syncSlice();
  }, (overlay, plane) => promptsOn(overlay, plane));
view.onRendered = () => {
  others.follow(view);
  others.names().forEach((name, n) => { $(`other-${'ab'[n]}-name`).textContent = name; });
};
view.onPainted = (box) => others.changed(box, view.labels);
$('layout').addEventListener('change', () => {
  others.on = $('layout').value === 'three';
  $('others').hidden = !others.on;
  requestAnimationFrame(() => view.render()); // the main view's size changed; it draws the others
});

function namePlanes() {
  for (const option of $('plane').options) {
    const normal = Number(option.value);
    const name = view.planeName(normal);
    const own = cine.on ? 'frames (time)' : view.dims[2] === 1 ? 'the picture' : `${name} (the app's slices)`;
    option.textContent = normal === 2 ? own : name;
  }
}

// the prompts of the structure being prompted, drawn and taken on a view (the main one or another plane)
function promptsOn(overlay, plane) {
  return new PromptCanvas(overlay, plane, {
    current: () => (state.image && state.label
      ? { label: state.label, prompts: promptsOf(state.label), locked: state.locked.has(state.label) } : null),
    onEdit: (clickedAt) => { refreshPanels(); requestMask(clickedAt); },
    say: (text, kind) => setStatus(text, kind),
    onPaint: (stroke, clickedAt) => paintStroke(stroke, clickedAt),
    radius: () => Number($('brush-size').value),
  });
}
const promptCanvas = promptsOn(marks, view);

function drawMarks() {
  promptCanvas.draw();
  others.draw();
}

marks.addEventListener('pointerdown', focusNow);
marks.addEventListener('wheel', (event) => {
  if (!state.image) return;
  event.preventDefault();
  moveSlice(view.currentSlice() + (event.deltaY > 0 ? -1 : 1));
}, { passive: false });

// The label's saved mask (or nothing) back on screen: its prompts are gone.
function restoreSaved(label) {
  const value = labelValue(label);
  const saved = state.saved.get(label);
  state.shown.setWhole(value, saved ? new Mask(saved.header, saved.voxels.slice(), saved.dims) : null);
  keepUnderManualEdits(label);
  if (saved) state.savedShown.add(label); else state.savedShown.delete(label);
  state.results.delete(label);
  view.paint(state.shown);
}

// Each edit sends every prompt of the label; an edit made while a result streams in stops that
// one (the server stops too) and asks again. The mask on screen changes slice by slice as the
// passes reach them (a preview), then becomes the final mask; stopped, it is what it was before.
async function requestMask(clickedAt) {
  const label = state.label;
  const value = labelValue(label);
  const prompts = promptsOf(label);
  stopRun(false);
  if (!prompts.canSegment()) {
    if (state.shown.snapshot) state.shown.revert();
    restoreSaved(label);
    refreshPanels();
    if (!prompts.isEmpty()) setStatus('Add a point inside the structure or a box.');
    return;
  }
  if (state.shown.snapshot && state.shown.snapshot.value !== value) state.shown.revert();
  if (!state.shown.snapshot) state.shown.keep(value);
  const run = { controller: new AbortController(), label, value, image: state.image, clickedAt, chain: Promise.resolve(),
    prompted: null, first: null, prompts, edits: prompts.edits.length };
  state.run = run;
  $('stop').hidden = false;
  setStatus(`Segmenting ${label}…`, 'busy');
  const params = prompts.request(label, clientId, [...state.locked].filter((l) => l !== label));
  prompts.resetNext = false;
  try {
    const answer = await segment(run.image, params, { signal: run.controller.signal, label: prompts.startFile(),
      onEvent: (name, data) => { if (name === 'slice') run.chain = run.chain.then(() => showSlice(run, data)); } });
    await run.chain;
    if (state.run !== run) return;
    await showFinal(run, answer);
  } catch (error) {
    if (state.run !== run) return; // stopped, or replaced by a newer edit: that one says what happens
    state.shown.revert();
    view.paint(state.shown);
    showError(error);
  } finally {
    if (state.run === run) { state.run = null; $('stop').hidden = true; }
  }
}

// Stop the segmentation streaming in (the server stops at its next slice); revert: put the
// structure back as it was before it began (the Stop button), else the next request replaces it.
function stopRun(revert) {
  const run = state.run;
  if (!run) return;
  state.run = null;
  run.controller.abort();
  $('stop').hidden = true;
  if (revert) {
    state.shown.revert();
    run.prompts.dropUnfinished(); // the marks on screen are the prompts of the mask on screen
    view.paint(state.shown);
    setStatus(`${run.label}: stopped; the mask and its prompts are as they were before.`);
    refreshPanels();
  }
}

async function showSlice(run, data) {
  if (state.run !== run) return;
  const region = await decodeRegion(data.mask, data.slice);
  if (state.run !== run) return;
  state.shown.writeSlice(run.value, data.slice, region);
  view.paint(state.shown);
  const of = data.expected ? `${data.step} of about ${data.expected}` : `${data.step} so far`;
  setStatus(`Segmenting ${run.label}: ${data.pass} pass, slice ${data.slice} (${of}), ${data.seconds.toFixed(1)} s…`, 'busy');
  if (run.first === null) {
    run.first = data.slice;
    run.promptedServer = data.seconds;
    await view.drawn();
    run.prompted = Math.round(performance.now() - run.clickedAt); // the prompted slice's mask on screen
  }
}

async function showFinal(run, answer) {
  const { result, labels } = answer;
  for (const [name, entry] of Object.entries(labels)) {
    const region = await decodeRegion(entry.mask);
    if (state.run !== run) return;
    state.shown.replace(labelValue(name), region);
    keepUnderManualEdits(name);
    state.savedShown.delete(name);
  }
  state.shown.snapshot = null;
  const label = run.label;
  run.prompts.done = run.edits;
  const firstResult = state.results.size === 0;
  state.results.set(label, result);
  if (firstResult) display.followModel(); // nothing to redraw when the study opened in the model's window
  view.paint(state.shown);
  await view.drawn();
  const ms = Math.round(performance.now() - run.clickedAt);
  state.timings.push({ label, prompted_ms: run.prompted, prompted_server_s: run.promptedServer, ms, server_s: result.latencies?.total, stages: result.stages });
  refreshPanels();
  const replaced = state.saved.has(label) ? ` It replaces the saved ${label} (Undo back to no prompt restores it).` : '';
  const version = result.model?.version?.name;
  const changed = version && state.modelVersion && version !== state.modelVersion
    ? ` New weights: ${version} made this mask (before: ${state.modelVersion}).` : '';
  if (version) state.modelVersion = version;
  setStatus(`${label}: final mask on screen ${(ms / 1000).toFixed(2)} s after the click `
    + `(server ${result.latencies?.total ?? '?'} s).${replaced}${changed}`, 'idle');
}

$('stop').addEventListener('click', () => stopRun(true));
$('clear').addEventListener('click', async () => {
  if (state.run?.label === state.label) stopRun(true);
  promptsOf(state.label).clear();
  const hadSaved = state.saved.delete(state.label);
  state.savedShown.delete(state.label);
  state.shown.setWhole(labelValue(state.label), null);
  state.results.delete(state.label);
  view.paint(state.shown);
  refreshPanels();
  setStatus(`${state.label} cleared.${hadSaved ? ' The saved one is removed from the final label when you save.' : ''}`);
});
$('slice').addEventListener('input', (event) => moveSlice(Number(event.target.value)));
$('plane').addEventListener('change', (event) => showPlane(Number(event.target.value)));
window.addEventListener('resize', () => requestAnimationFrame(drawMarks));
// the image moves when a banner or the result panel appears: redraw the marks where it now is
new ResizeObserver(() => requestAnimationFrame(() => requestAnimationFrame(drawMarks))).observe($('stage'));

// ---- saving ---------------------------------------------------------------------------------
$('save').addEventListener('click', async () => {
  $('save').disabled = true;
  setStatus('Saving…', 'busy');
  try {
    const answer = await saveStructures(state, studyName(state.image));
    setStatus(`Saved: final label of ${studyName(state.image)}.`, answer.warning ? 'error' : 'idle');
    await studiesChanged();
  } catch (error) {
    if (error instanceof SaveConflict) {
      setStatus(error.message, 'error');
    } else {
      showError(error);
    }
  } finally {
    refreshPanels();
  }
});

// a final label was saved: the list's marks and the loop's progress
async function studiesChanged() {
  state.studies = await listStudies();
  renderStudies();
  loop.refresh().catch(() => {});
}

// ---- opening a study --------------------------------------------------------------------------
// The slice the page opens on comes first, alone (a few hundred kB), while the whole study
// travels; both are drawn in the window the model will use, so its first result redraws nothing.
async function openStudy(image) {
  stopRun(true);
  cine.open(null);
  setStatus(`Opening ${studyName(image)}…`, 'busy');
  const started = performance.now();
  const opening = { image, first_ms: null, whole_ms: null };
  state.image = null; // no prompt until the whole study is here
  const whole = fetchVolume(image, clientId, 'all');
  const final = fetchFinal(image);
  whole.catch(() => {});
  final.catch(() => {});
  let study;
  try {
    const first = await Promise.race([fetchVolume(image, clientId, 'slice').catch(() => null), whole.then(() => null)]);
    if (first) {
      $('empty').hidden = true;
      view.open(first.buffer, { window: first.window, slice: 0 });
      await view.drawn();
      opening.first_ms = Math.round(performance.now() - started);
      $('slice-label').textContent = `${first.slice} / ${first.dims[2] - 1}`;
      setStatus(`${studyName(image)}: slice ${first.slice} shown; the rest of the study is on its way…`, 'busy');
    }
    study = await whole;
    opening.fetched_ms = Math.round(performance.now() - started);
    const header = labelHeader(new Uint8Array(study.buffer, 0, Math.round(new DataView(study.buffer).getFloat32(108, true))));
    view.open(study.buffer, { window: study.window, slice: first?.slice, steps: opening, started });
    Object.assign(state, { prompts: new Map(), results: new Map(), saved: new Map(), savedShown: new Set(), version: null,
      locked: new Set(),
      shown: new LabelVolume(header, view.dims) });
    state.masks = state.shown.masks;
    state.modelWindowShown = study.window;
  } catch (error) {
    showError(error);
    return;
  }
  state.image = image;
  $('save').textContent = 'Save as final label';
  let unknown = [];
  try {
    // the saved final label, each structure whole: shown, and saved again unless changed
    const saved = await final;
    state.version = saved.version;
    for (const { name, mask } of saved.structures) {
      if (!state.labels.includes(name)) { unknown.push(name); continue; }
      state.saved.set(name, mask);
      state.savedShown.add(name);
      state.shown.setWhole(labelValue(name), new Mask(mask.header, mask.voxels.slice(), mask.dims));
    }
    view.paint(state.shown);
  } catch (error) {
    showError(error);
    return;
  }
  display.apply();
  await view.drawn();
  opening.whole_ms = Math.round(performance.now() - started); // fetch, decode, first draw of the whole study
  state.opening = opening;
  $('empty').hidden = true;
  $('slice').max = view.dims[2] - 1;
  $('slice').disabled = false;
  $('plane').value = '2';
  cine.open(study.frameTimeMs, study.video); // a video: frames, not slices; no plane across them
  $('slice-name').textContent = cine.on ? 'Frame' : 'Slice';
  state.unit = cine.on ? 'frame' : 'slice'; // the result panel's word for the third axis
  const picture = view.dims[2] === 1; // a picture: one plane, no slices or planes across it
  $('slice').disabled = picture;
  $('plane').disabled = cine.on || picture;
  $('layout').disabled = cine.on || picture;
  $('window').disabled = Boolean(view.image.rgb); // colours as they are: the model takes them so
  if ((cine.on || picture) && $('layout').value !== 'one') {
    $('layout').value = 'one';
    $('layout').dispatchEvent(new Event('change'));
  }
  namePlanes();
  studyOpened(image); // one-prompt: the patient's follow-ups; a review of another study ends
  $('save-status').textContent = '';
  renderStudies();
  syncSlice();
  refreshPanels();
  const opened = `${studyName(image)}: ${view.dims.join(' x ')} voxels`;
  if (unknown.length) {
    setStatus(`${opened}. Its final label has structures this server does not offer (${unknown.join(', ')}): `
      + 'they are not shown, and saving here would drop them.', 'error');
  } else {
    setStatus(`${opened}${state.saved.size ? `, final label: ${[...state.saved.keys()].join(', ')}` : ''}. `
      + 'Click inside a structure, or draw a box.');
  }
}

async function start() {
  for (;;) {
    try {
      if (await needsLogIn()) {
        setStatus('Log in to use this server.');
        await askLogIn();
      }
      const { labels } = await appInfo();
      state.labels = labels;
      state.label = labels[0];
      state.studies = await listStudies();
      break;
    } catch (error) {
      if (!(error instanceof AuthRequired)) { setStatus(error.message, 'error'); return; }
      setStatus(error.message, 'error');
      await askLogIn();
    }
  }
  renderStudies();
  refreshPanels();
  setStatus(`${state.studies.length} studies. Model ${MODEL}; this tab's session ${clientId}.`);
  await loop.refresh().catch((error) => setStatus(error.message, 'error'));
  loop.follow(); // from now on the server pushes every change of the loop to this tab
}

// the learning loop: "Next study" opens what the strategy picks; the page hides what the user
// may not do (the server refuses it anyway)
const loop = new LearningLoop({
  openStudy: async (image) => {
    if (!state.studies.some((s) => s.image === image)) state.studies = await listStudies();
    await openStudy(image);
  },
  onState: (loopState) => {
    const before = state.loop?.progress?.labelled;
    state.loop = loopState;
    $('save').hidden = !loopState.can.save;
    if (before !== undefined && before !== loopState.progress.labelled) { // saved elsewhere: the list's marks
      listStudies().then((studies) => { state.studies = studies; renderStudies(); }).catch(() => {});
    }
  },
});

Object.assign(hooks, { requestMask, refreshPanels, openStudy, goToSlice, restoreSaved, studiesChanged });

// for the end-to-end tests and for scripting: where a voxel is on the page, and what happened
window.medsam2Viewer = {
  state,
  view,
  pagePosition(voxel) {
    const p = view.canvasOf(voxel);
    if (!p) return null;
    const rect = marks.getBoundingClientRect();
    return [rect.left + p[0], rect.top + p[1]];
  },
  goToSlice,
  showPlane,
  refreshStudies: () => hooks.studiesChanged(), // as after a save here or in another tab
  others,
  cine,
  // where a voxel is on the page in other plane n (0, 1) of the three-view layout
  otherPosition(n, voxel) {
    const other = others.views[n];
    const p = other.canvasOf(voxel);
    if (!p) return null;
    const rect = other.canvas.getBoundingClientRect();
    return [rect.left + p[0], rect.top + p[1]];
  },
  loop,
  onePrompt,
  streamsAnswered,
  ready: start(),
};

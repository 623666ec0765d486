// The annotation page: study list, structures, prompts, the app's masks, save as final.

import { AuthRequired, MODEL, SaveConflict, appInfo, fetchFinal, fetchVolume, listStudies, needsLogIn, segment, sendFocus,
  streamsAnswered } from './api.js';
import { DisplayWindow } from './display.js';
import { LabelVolume, Mask, decodeRegion, labelHeader } from './labelmap.js';
import { askLogIn } from './login.js';
import { LearningLoop } from './loop.js';
import { showOverlaps, showResult } from './panels.js';
import { paintManual, redrawManual, sliceAfter, sliceMaskField } from './brush.js';
import { OtherPlanes } from './other_planes.js';
import { LabelPrompts } from './prompts.js';
import { saveStructures } from './saving.js';
import { PromptCanvas } from './tools.js';
import { LABEL_COLOURS, VolumeView } from './view.js';


const $ = (id) => document.getElementById(id);
const clientId = sessionStorage.getItem('medsam2-client') || `viewer-${crypto.randomUUID()}`;
sessionStorage.setItem('medsam2-client', clientId); // one session per browser tab

const state = {
  labels: [],
  studies: [],
  image: null,
  label: null,
  prompts: new Map(), // label -> LabelPrompts
  shown: null, // LabelVolume: the structures on screen
  masks: new Map(), // label value (1-based) -> Mask (the LabelVolume's)
  results: new Map(), // label -> last result JSON
  saved: new Map(), // label -> its mask in the study's saved final label (a copy, never changed)
  savedShown: new Set(), // labels whose mask on screen is the saved one
  run: null, // the segmentation streaming in: {controller, label, ...}
  timings: [], // per request: mouse-up to the prompted slice's mask, and to the final mask, on screen (ms)
  opening: null, // the last open: ms from the pick to the first slice, and to the whole study, on screen
  locked: new Set(), // labels whose voxels no other structure takes (the app's `locked`)
};
const view = new VolumeView($('image'));
const marks = $('marks');

function setStatus(text, kind = 'idle') {
  $('status').textContent = text;
  $('status').dataset.state = kind;
}

function showError(error) {
  setStatus(error.message, 'error');
  if (error instanceof AuthRequired) askLogIn();
}

function studyName(image) {
  return state.studies.find((s) => s.image === image)?.description || image;
}

function labelValue(label) {
  return state.labels.indexOf(label) + 1;
}

function promptsOf(label) {
  if (!state.prompts.has(label)) state.prompts.set(label, new LabelPrompts());
  return state.prompts.get(label);
}

// ---- lists -------------------------------------------------------------------------------
function renderStudies() {
  const list = $('studies');
  list.replaceChildren();
  for (const study of state.studies) {
    const item = document.createElement('li');
    item.dataset.image = study.image;
    item.textContent = study.description || study.image;
    item.title = study.image;
    if (study.final) item.append(Object.assign(document.createElement('span'), { className: 'tag', textContent: 'final ✓' }));
    if (study.image === state.image) item.classList.add('selected');
    item.addEventListener('click', () => openStudy(study.image));
    list.append(item);
  }
}

function renderLabels() {
  const list = $('labels');
  list.replaceChildren();
  state.labels.forEach((label, n) => {
    const item = document.createElement('li');
    item.dataset.label = label;
    const swatch = Object.assign(document.createElement('span'), { className: 'swatch' });
    swatch.style.background = LABEL_COLOURS[n % LABEL_COLOURS.length];
    const mask = state.masks.get(n + 1);
    const count = mask?.count();
    item.append(swatch, label);
    const saved = mask && state.savedShown.has(label) ? ' saved' : '';
    if (count) item.append(Object.assign(document.createElement('span'), { className: 'tag', textContent: `${count} vx${saved}` }));
    const lock = Object.assign(document.createElement('button'), {
      type: 'button', className: 'lock', textContent: state.locked.has(label) ? 'locked' : 'lock',
      title: 'Locked: other structures never take its voxels, and it is not segmented again' });
    lock.setAttribute('aria-pressed', String(state.locked.has(label)));
    lock.disabled = !count;
    lock.addEventListener('click', (event) => {
      event.stopPropagation();
      if (state.locked.has(label)) state.locked.delete(label); else state.locked.add(label);
      refreshPanels();
    });
    item.append(lock);
    if (state.locked.has(label)) item.classList.add('locked');
    if (label === state.label) item.classList.add('selected');
    item.addEventListener('click', () => { state.label = label; refreshPanels(); });
    list.append(item);
  });
}

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
    const count = (kind) => prompts.edits.filter((e) => e.kind === kind).length;
    const drawn = [count('stroke') && `${count('stroke')} scribble(s)`, count('lasso') && `${count('lasso')} outline(s)`,
      count('slice_mask') && `${count('slice_mask')} painted slice(s)`,
      count('paint') && `${count('paint')} manual brush edit(s)`, count('start') && `started from ${prompts.startFile() ? prompts.startFile().name : 'its saved mask'}`].filter(Boolean);
    $('prompt-summary').textContent = `${state.label}: ${prompts.points(true).length} inside, `
      + `${prompts.points(false).length} outside${box ? `, box on slice ${box[4]}` : ''}`
      + `${drawn.length ? `, ${drawn.join(', ')}` : ''}${state.locked.has(state.label) ? ' (locked)' : ''}`;
  }
  renderOverlaps();
  renderResult();
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
  $('slice-label').textContent = `${k} / ${view.dims[view.normal] - 1}`;
  drawMarks();
  // where the clinician looks is where the next prompt will be: the server encodes outward from it
  clearTimeout(focusTimer);
  const image = state.image;
  const slice = view.cursor[2];
  focusTimer = setTimeout(() => { if (image) sendFocus(image, clientId, slice).catch(() => {}); }, 300);
}

// a prompt begins on this slice: the server encodes it while the box or stroke is drawn, so
// mouse-up waits for the decoder only
function focusNow() {
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

// The three-view layout (other_planes.js): a click on another plane moves the cursor there (the
// main view's slice follows); a double click shows that plane in the main view.
const others = new OtherPlanes([$('other-a'), $('other-b')], (voxel, normal, bring) => {
  view.setPlane(bring ? normal : view.normal, voxel);
  $('plane').value = String(view.normal);
  syncSlice();
});
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
    option.textContent = normal === 2 ? `${name} (the app's slices)` : name;
  }
}

const promptCanvas = new PromptCanvas(marks, view, {
  current: () => (state.image && state.label
    ? { label: state.label, prompts: promptsOf(state.label), locked: state.locked.has(state.label) } : null),
  onEdit: (clickedAt) => { refreshPanels(); requestMask(clickedAt); },
  say: (text, kind) => setStatus(text, kind),
  onPaint: (stroke, clickedAt) => paintStroke(stroke, clickedAt),
  radius: () => Number($('brush-size').value),
});

function drawMarks() {
  promptCanvas.draw();
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

function undoRedo(redo) {
  const prompts = promptsOf(state.label);
  const edit = redo ? prompts.undone.at(-1) : prompts.edits.at(-1);
  if (redo) prompts.redo(); else prompts.undo();
  refreshPanels();
  if (edit?.kind !== 'paint') { requestMask(performance.now()); return; }
  prompts.done = prompts.edits.length; // a manual edit asks the model nothing
  redrawManual(state.shown, labelValue(state.label), prompts.edits);
  view.paint(state.shown);
  refreshPanels();
}

// The structure as the model (or the saved label) left it is what its manual edits are drawn over.
function keepUnderManualEdits(label) {
  const value = labelValue(label);
  state.shown.keepBase(value);
  const edits = promptsOf(label).edits;
  if (edits.some((e) => e.kind === 'paint')) redrawManual(state.shown, value, edits);
}

// The brush or eraser drew on the shown slice (brush.js). Manual: exactly those voxels change,
// and stay so over the structure's later results. Re-propagate: the slice as it is after the
// edit becomes that slice's mask prompt, and the structure is segmented again from it.
async function paintStroke(stroke, clickedAt) {
  const label = state.label;
  const value = labelValue(label);
  const prompts = promptsOf(label);
  const done = stroke.add ? 'painted' : 'erased';
  if ($('brush-mode').value === 'manual') {
    if (!state.shown.hasBase(value)) state.shown.keepBase(value);
    prompts.add({ kind: 'paint', ...stroke });
    prompts.done = prompts.edits.length;
    paintManual(state.shown, value, stroke);
    view.paint(state.shown);
    refreshPanels();
    setStatus(`${label}: ${stroke.voxels.length} voxels ${done} by hand on slice ${stroke.slice}; nothing else changed.`);
    return;
  }
  const region = sliceAfter(state.shown, value, stroke);
  if (!region) {
    setStatus(`Nothing of ${label} would be left on slice ${stroke.slice}: to take it off this slice, add an `
      + 'outside point there, or erase in manual mode.', 'error');
    return;
  }
  prompts.add({ kind: 'slice_mask', slice: stroke.slice, field: await sliceMaskField(region) });
  refreshPanels();
  requestMask(clickedAt);
}
$('undo').addEventListener('click', () => undoRedo(false));
$('redo').addEventListener('click', () => undoRedo(true));
// as in Slicer's Segment Editor: Ctrl+Z undoes, Ctrl+Y or Ctrl+Shift+Z redoes
window.addEventListener('keydown', (event) => {
  if (!(event.ctrlKey || event.metaKey) || !state.image || state.locked.has(state.label)) return;
  const key = event.key.toLowerCase();
  if (key === 'z' && !event.shiftKey && !$('undo').disabled) { event.preventDefault(); undoRedo(false); }
  if ((key === 'y' || (key === 'z' && event.shiftKey)) && !$('redo').disabled) { event.preventDefault(); undoRedo(true); }
});
// the structure's saved mask on the shown slice becomes its starting mask (refined with SAM 2)
$('start-saved').addEventListener('click', () => {
  const k = view.currentSlice();
  const saved = state.saved.get(state.label);
  const [ni, nj] = saved.dims;
  let any = false;
  for (let n = ni * nj * k; n < ni * nj * (k + 1) && !any; n += 1) any = saved.voxels[n] > 0;
  if (!any) { setStatus(`${state.label}: its saved mask has nothing on slice ${k}; go to a slice it covers.`, 'error'); return; }
  promptsOf(state.label).startFrom('final', state.label, [k]);
  refreshPanels();
  requestMask(performance.now());
});
// a label file's mask on the shown slice becomes the structure's starting mask (the file goes
// with each of the structure's requests while that start is among its prompts)
$('start-file').addEventListener('change', () => {
  const file = $('start-file').files[0];
  $('start-file').value = '';
  if (!file || !state.image || !state.label || state.locked.has(state.label)) return;
  promptsOf(state.label).startFrom('upload', file.name, [view.currentSlice()], file);
  refreshPanels();
  requestMask(performance.now());
});
// another structure's mask on the shown slice, as the page shows it, is this one's starting mask
// (sent as that slice's mask prompt: what is on screen, manual edits included)
$('start-structure').addEventListener('change', async () => {
  const from = $('start-structure').value;
  $('start-structure').value = '';
  if (!from || !state.label || state.locked.has(state.label)) return;
  const k = view.currentSlice();
  const region = sliceAfter(state.shown, labelValue(from), { slice: k, add: true, voxels: [] });
  if (!region) { setStatus(`${from} has nothing on slice ${k}: go to a slice it covers.`, 'error'); return; }
  promptsOf(state.label).add({ kind: 'slice_mask', slice: k, field: await sliceMaskField(region), from });
  refreshPanels();
  requestMask(performance.now());
});
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
    state.studies = await listStudies();
    renderStudies();
    loop.refresh().catch(() => {});
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

// ---- opening a study --------------------------------------------------------------------------
// The slice the page opens on comes first, alone (a few hundred kB), while the whole study
// travels; both are drawn in the window the model will use, so its first result redraws nothing.
async function openStudy(image) {
  stopRun(true);
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
  $('plane').disabled = false;
  namePlanes();
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

// for the end-to-end test and for scripting: where a voxel is on the page, and what happened
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
  others,
  // where a voxel is on the page in other plane n (0, 1) of the three-view layout
  otherPosition(n, voxel) {
    const other = others.views[n];
    const p = other.canvasOf(voxel);
    if (!p) return null;
    const rect = other.canvas.getBoundingClientRect();
    return [rect.left + p[0], rect.top + p[1]];
  },
  loop,
  streamsAnswered,
  ready: start(),
};

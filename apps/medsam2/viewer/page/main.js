// The annotation page: study list, structures, prompts, the app's masks, save as final.

import { AuthRequired, MODEL, SaveConflict, appInfo, fetchFinal, fetchVolume, infer, listStudies, needsLogIn, sendFocus,
} from './api.js';
import { DisplayWindow } from './display.js';
import { combine } from './labelmap.js';
import { askLogIn } from './login.js';
import { LearningLoop } from './loop.js';
import { showOverlaps, showResult } from './panels.js';
import { LabelPrompts } from './prompts.js';
import { saveStructures } from './saving.js';
import { LABEL_COLOURS, VolumeView } from './view.js';

const DRAG_PIXELS = 4;

const $ = (id) => document.getElementById(id);
const clientId = sessionStorage.getItem('medsam2-client') || `viewer-${crypto.randomUUID()}`;
sessionStorage.setItem('medsam2-client', clientId); // one session per browser tab

const state = {
  labels: [],
  studies: [],
  image: null,
  label: null,
  prompts: new Map(), // label -> LabelPrompts
  masks: new Map(), // label value (1-based) -> Mask
  results: new Map(), // label -> last result JSON
  saved: new Map(), // label -> its mask in the study's saved final label (shown until re-segmented)
  inFlight: false,
  pending: null,
  timings: [], // click to mask on screen, ms
};
const view = new VolumeView($('gl'));
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
    const saved = mask && state.saved.get(label) === mask ? ' saved' : '';
    if (count) item.append(Object.assign(document.createElement('span'), { className: 'tag', textContent: `${count} vx${saved}` }));
    if (label === state.label) item.classList.add('selected');
    item.addEventListener('click', () => { state.label = label; refreshPanels(); });
    list.append(item);
  });
}

function refreshPanels() {
  renderLabels();
  const prompts = state.label ? promptsOf(state.label) : null;
  const open = Boolean(state.image);
  $('undo').disabled = !open || !prompts || prompts.isEmpty();
  $('clear').disabled = !open || !prompts || (prompts.isEmpty() && !state.masks.has(labelValue(state.label)));
  $('save').disabled = !open || ![...state.masks.values()].some((m) => m.count() > 0);
  if (prompts) {
    const box = prompts.box();
    $('prompt-summary').textContent = `${state.label}: ${prompts.points(true).length} inside, `
      + `${prompts.points(false).length} outside${box ? `, box on slice ${box[4]}` : ''}`;
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
const display = new DisplayWindow(view, $('window'),
  () => [...state.results.values()].map((r) => r.window).find((w) => w && w.high > w.low));

// ---- slices and marks ---------------------------------------------------------------------
function goToSlice(k) {
  view.goToSlice(k);
  syncSlice();
}

let focusTimer = null;
function syncSlice() {
  const k = view.currentSlice();
  $('slice').value = k;
  $('slice-label').textContent = `${k} / ${view.dims[2] - 1}`;
  drawMarks();
  // where the clinician looks is where the next prompt will be: the server encodes outward from it
  clearTimeout(focusTimer);
  const image = state.image;
  focusTimer = setTimeout(() => { if (image) sendFocus(image, clientId, k).catch(() => {}); }, 300);
}

let dragStart = null;
let dragNow = null;

function drawMarks() {
  const dpr = window.devicePixelRatio || 1;
  const { clientWidth: w, clientHeight: h } = marks;
  if (marks.width !== w * dpr || marks.height !== h * dpr) { marks.width = w * dpr; marks.height = h * dpr; }
  const ctx = marks.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  if (!state.image || !state.label) return;
  const k = view.currentSlice();
  const prompts = promptsOf(state.label);
  for (const edit of prompts.edits) {
    if (edit.kind === 'point' && edit.voxel[2] === k) {
      const p = view.canvasOf(edit.voxel);
      if (!p) continue;
      ctx.beginPath();
      ctx.arc(p[0], p[1], 5, 0, 2 * Math.PI);
      ctx.fillStyle = edit.positive ? '#30e060' : '#ff4040';
      ctx.fill();
      ctx.strokeStyle = '#000';
      ctx.stroke();
    } else if (edit.kind === 'box' && edit.roi[4] === k) {
      const a = view.canvasOf([edit.roi[0], edit.roi[2], k]);
      const b = view.canvasOf([edit.roi[1], edit.roi[3], k]);
      if (a && b) strokeBox(ctx, a, b, '#4fc3ff');
    }
  }
  if (dragStart && dragNow) strokeBox(ctx, dragStart, dragNow, '#ffffff');
}

function strokeBox(ctx, a, b, colour) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2;
  ctx.strokeRect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1]));
}

// ---- prompting ------------------------------------------------------------------------------
function tool() {
  return document.querySelector('input[name="tool"]:checked').value;
}

function canvasXY(event) {
  const rect = marks.getBoundingClientRect();
  return [event.clientX - rect.left, event.clientY - rect.top];
}

marks.addEventListener('contextmenu', (event) => event.preventDefault());
marks.addEventListener('pointerdown', (event) => {
  if (!state.image) return;
  dragStart = canvasXY(event);
  dragNow = null;
  marks.setPointerCapture(event.pointerId);
});
marks.addEventListener('pointermove', (event) => {
  if (!dragStart || tool() !== 'box') return;
  dragNow = canvasXY(event);
  drawMarks();
});
marks.addEventListener('pointerup', (event) => {
  if (!dragStart) return;
  const start = dragStart;
  const end = canvasXY(event);
  dragStart = dragNow = null;
  const clickedAt = performance.now();
  const moved = Math.hypot(end[0] - start[0], end[1] - start[1]) > DRAG_PIXELS;
  const prompts = promptsOf(state.label);
  if (tool() === 'box' && moved && event.button === 0) {
    const a = view.voxelAt(...start);
    const b = view.voxelAt(...end);
    if (!a || !b) { setStatus('Draw the box on the image.', 'error'); drawMarks(); return; }
    prompts.setBox(a, b);
  } else if (!moved) {
    const voxel = view.voxelAt(...end);
    if (!voxel) return;
    prompts.addPoint(voxel, !(event.button === 2 || event.shiftKey));
  } else {
    drawMarks();
    return;
  }
  refreshPanels();
  requestMask(clickedAt);
});
marks.addEventListener('wheel', (event) => {
  if (!state.image) return;
  event.preventDefault();
  goToSlice(view.currentSlice() + (event.deltaY > 0 ? -1 : 1));
}, { passive: false });

// One request at a time; edits made meanwhile go in the next one (all prompts are resent).
async function requestMask(clickedAt) {
  const label = state.label;
  const prompts = promptsOf(label);
  if (!prompts.canSegment()) {
    if (state.saved.has(label)) state.masks.set(labelValue(label), state.saved.get(label));
    else state.masks.delete(labelValue(label));
    state.results.delete(label);
    await view.showLabels(combine(state.masks));
    refreshPanels();
    if (!prompts.isEmpty()) setStatus('Add a point inside the structure or a box.');
    return;
  }
  if (state.inFlight) { state.pending = clickedAt; return; }
  state.inFlight = true;
  const image = state.image;
  setStatus(`Segmenting ${label}…`, 'busy');
  try {
    const params = prompts.request(label, clientId);
    const { result, mask } = await infer(image, params);
    prompts.resetNext = false;
    if (image !== state.image) return;
    const firstResult = state.results.size === 0;
    state.results.set(label, result);
    if (firstResult) display.followModel();
    if (mask) state.masks.set(labelValue(label), mask);
    await view.showLabels(combine(state.masks));
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    const ms = Math.round(performance.now() - clickedAt);
    state.timings.push({ label, ms, server_s: result.latencies?.total });
    refreshPanels();
    const replaced = state.saved.has(label) ? ` It replaces the saved ${label} (Undo back to no prompt restores it).` : '';
    const version = result.model?.version?.name;
    const changed = version && state.modelVersion && version !== state.modelVersion
      ? ` New weights: ${version} made this mask (before: ${state.modelVersion}).` : '';
    if (version) state.modelVersion = version;
    setStatus(`${label}: mask on screen ${(ms / 1000).toFixed(2)} s after the click `
      + `(server ${result.latencies?.total ?? '?'} s).${replaced}${changed}`, 'idle');
  } catch (error) {
    showError(error);
  } finally {
    state.inFlight = false;
    if (state.pending !== null) {
      const next = state.pending;
      state.pending = null;
      requestMask(next);
    }
  }
}

$('undo').addEventListener('click', () => {
  promptsOf(state.label).undo();
  refreshPanels();
  requestMask(performance.now());
});
$('clear').addEventListener('click', async () => {
  promptsOf(state.label).clear();
  const hadSaved = state.saved.delete(state.label);
  state.masks.delete(labelValue(state.label));
  state.results.delete(state.label);
  await view.showLabels(combine(state.masks));
  refreshPanels();
  setStatus(`${state.label} cleared.${hadSaved ? ' The saved one is removed from the final label when you save.' : ''}`);
});
$('slice').addEventListener('input', (event) => goToSlice(Number(event.target.value)));
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
async function openStudy(image) {
  setStatus(`Opening ${studyName(image)}…`, 'busy');
  const started = performance.now();
  try {
    const buffer = await fetchVolume(image, clientId);
    await view.open(buffer, `${image}.nii.gz`);
  } catch (error) {
    showError(error);
    return;
  }
  Object.assign(state, { image, prompts: new Map(), masks: new Map(), results: new Map(), saved: new Map(), pending: null,
    version: null });
  $('save').textContent = 'Save as final label';
  let unknown = [];
  try {
    // the saved final label, each structure whole: shown, and saved again unless changed
    const final = await fetchFinal(image);
    state.version = final.version;
    for (const { name, mask } of final.structures) {
      if (!state.labels.includes(name)) { unknown.push(name); continue; }
      state.saved.set(name, mask);
      state.masks.set(labelValue(name), mask);
    }
    await view.showLabels(combine(state.masks));
  } catch (error) {
    showError(error);
    return;
  }
  display.apply();
  state.opened = { image, ms: Math.round(performance.now() - started) }; // fetch, decode, first draw
  $('empty').hidden = true;
  $('slice').max = view.dims[2] - 1;
  $('slice').disabled = false;
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
  loop,
  ready: start(),
};

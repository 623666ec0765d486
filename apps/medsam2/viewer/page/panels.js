// The panels below the image and beside it: overlaps before saving, the result of the chosen
// structure (warning banner, which weights made it, the slices the model is unsure of).

import { combine, overlaps } from './labelmap.js';

// A slice is listed as unsure when SAM 2's predicted IoU for its mask is low, or its
// object score (a logit: > 0 means "the structure is here") is close to the boundary.
const UNSURE_IOU = 0.8;
const UNSURE_SCORE = 2.0;

const $ = (id) => document.getElementById(id);

// Structures that share voxels: the label map shows the smaller one there (the app's rule);
// the saved structures and the DICOM SEG keep each whole. Said before saving, not after.
export function showOverlaps(state) {
  const shown = new Map([...state.masks].filter(([, m]) => m.count() > 0));
  const map = combine(shown);
  $('overlaps').textContent = overlaps(shown).map(({ values: [a, b], voxels }) => {
    const n = map.voxels.findIndex((v, i) => v && shown.get(a).voxels[i] && shown.get(b).voxels[i]);
    return `${state.labels[a - 1]} and ${state.labels[b - 1]} overlap on ${voxels} voxels: shown as `
      + `${state.labels[map.voxels[n] - 1]}; both are saved whole.`;
  }).join(' ');
}

// The result JSON of the chosen structure: warning, which weights, per-slice confidence.
export function showResult(state, value, goToSlice) {
  const result = state.results.get(state.label);
  const savedMask = state.saved.get(state.label);
  if (!result && savedMask && state.masks.get(value) === savedMask) {
    $('result').hidden = false;
    $('result-summary').textContent = `${state.label}: the saved final label, ${savedMask.count()} voxels. `
      + 'A click or box re-segments this structure (Undo back to no prompt restores the saved one).';
    $('unsure').replaceChildren();
  }
  const warning = [...state.results.values()].map((r) => r.warning).find(Boolean);
  $('warning').hidden = !warning;
  $('warning').textContent = warning ? `⚠ ${warning}` : '';
  if (!result) { if (!savedMask) $('result').hidden = true; return; }
  $('result').hidden = false;
  const info = result.labels?.[state.label] || {};
  const slices = info.slices || [];
  const withMask = slices.filter((s) => s.area > 0);
  const span = withMask.length ? `slices ${withMask[0].slice}-${withMask[withMask.length - 1].slice}` : 'no slice';
  $('result-summary').textContent = `${state.label}: ${info.voxels ?? 0} voxels on ${withMask.length} slices (${span}); `
    + `made by ${result.model?.version?.name ?? 'the served weights'} (${result.model?.checkpoint?.split('/').pop() ?? '?'}); `
    + `${result.latencies?.total ?? '?'} s on the server`
    + (info.exact_stop ? `. ${info.exact_stop.note}` : '');
  const unsure = slices.filter((s) => (s.area > 0 && s.predicted_iou !== null && s.predicted_iou < UNSURE_IOU)
    || Math.abs(s.object_score) < UNSURE_SCORE);
  const box = $('unsure');
  box.replaceChildren(document.createTextNode(unsure.length
    ? `The model is unsure on ${unsure.length} slice(s) (predicted IoU < ${UNSURE_IOU} or object score near 0): check them `
    : 'The model is confident on every slice it segmented.'));
  for (const s of unsure) {
    const button = Object.assign(document.createElement('button'), { type: 'button', textContent: `${s.slice}` });
    button.title = `object score ${s.object_score}, predicted IoU ${s.predicted_iou}, area ${s.area}`;
    button.dataset.slice = s.slice;
    button.addEventListener('click', () => goToSlice(s.slice));
    box.append(button);
  }
}


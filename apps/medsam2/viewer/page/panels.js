// The panels below the image and beside it: overlaps before saving, the result of the chosen
// structure (warning banner, which weights made it, the slices the model is unsure of).

// A slice is listed to check when SAM 2's own estimate of its mask there (the predicted IoU) is
// well below the structure's typical slice, or its object score (a logit: > 0 means "the structure
// is here") says the structure is barely there. Relative, because the estimate's scale depends on
// the weights: an absolute cut flagged every slice of a right mask with phantom-trained weights.
const BELOW_MEDIAN = 0.1;
const BARELY_THERE = 1.0;

const $ = (id) => document.getElementById(id);

// Structures that share voxels: the label map shows the smaller one there (the app's rule);
// the saved structures and the DICOM SEG keep each whole. Said before saving, not after.
// Counted inside the boxes the structures share only.
export function showOverlaps(state) {
  const shown = state.shown ? [...state.shown.shown()].sort((a, b) => a[0] - b[0]) : [];
  const [ni, nj] = state.shown?.dims || [0, 0];
  const out = [];
  for (let x = 0; x < shown.length; x += 1) {
    for (let y = x + 1; y < shown.length; y += 1) {
      const [a, ma] = shown[x];
      const [b, mb] = shown[y];
      if (!ma.box || !mb.box) continue;
      const box = ma.box.map(([lo, hi], d) => [Math.max(lo, mb.box[d][0]), Math.min(hi, mb.box[d][1])]);
      if (box.some(([lo, hi]) => lo >= hi)) continue;
      let shared = 0;
      let shownAs = 0;
      for (let k = box[2][0]; k < box[2][1]; k += 1) {
        for (let j = box[1][0]; j < box[1][1]; j += 1) {
          for (let i = box[0][0]; i < box[0][1]; i += 1) {
            const n = i + ni * (j + nj * k);
            if (ma.voxels[n] && mb.voxels[n]) { shared += 1; shownAs = shownAs || state.shown.map[n]; }
          }
        }
      }
      if (shared) {
        out.push(`${state.labels[a - 1]} and ${state.labels[b - 1]} overlap on ${shared} voxels: shown as `
          + `${state.labels[shownAs - 1]}; both are saved whole.`);
      }
    }
  }
  $('overlaps').textContent = out.join(' ');
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
}

// The slices of a result to check (see BELOW_MEDIAN), and the median estimate they are below.
export function slicesToCheck(slices) {
  const withMask = slices.filter((s) => s.area > 0);
  const typical = median(withMask.map((s) => s.predicted_iou).filter((v) => v !== null));
  const check = withMask.filter((s) => (typical !== null && s.predicted_iou !== null && s.predicted_iou < typical - BELOW_MEDIAN)
    || s.object_score < BARELY_THERE);
  return { check, typical };
}

// The result JSON of the chosen structure: warning, which weights, per-slice confidence.
export function showResult(state, value, goToSlice) {
  const result = state.results.get(state.label);
  const savedMask = state.saved.get(state.label);
  if (!result && savedMask && state.savedShown.has(state.label)) {
    $('result-summary').textContent = `${state.label}: the saved final label, ${savedMask.count()} voxels. `
      + 'A click or box re-segments this structure (Undo back to no prompt restores the saved one).';
    $('unsure').replaceChildren();
  }
  const warning = [...state.results.values()].map((r) => r.warning).find(Boolean);
  $('warning').hidden = !warning;
  $('warning').textContent = warning ? `⚠ ${warning}` : '';
  if (!result) {
    if (!savedMask || !state.savedShown.has(state.label)) { $('result-summary').textContent = ''; $('unsure').replaceChildren(); }
    return;
  }
  const info = result.labels?.[state.label] || {};
  const slices = info.slices || [];
  const unit = state.unit || 'slice'; // a video's third axis is its frames
  const withMask = slices.filter((s) => s.area > 0);
  const span = withMask.length ? `${unit}s ${withMask[0].slice}-${withMask[withMask.length - 1].slice}` : `no ${unit}`;
  $('result-summary').textContent = `${state.label}: ${info.voxels ?? 0} voxels on ${withMask.length} ${unit}s (${span}); `
    + `made by ${result.model?.version?.name ?? 'the served weights'} (${result.model?.checkpoint?.split('/').pop() ?? '?'}); `
    + `${result.latencies?.total ?? '?'} s on the server`
    + (info.exact_stop ? `. ${info.exact_stop.note}` : '');
  if (!withMask.length) {
    $('unsure').replaceChildren(document.createTextNode('The mask is empty: the model found nothing from these prompts.'));
    return;
  }
  const { check: unsure, typical } = slicesToCheck(slices);
  const estimate = typical === null ? '' : ` (median ${typical.toFixed(2)})`;
  const box = $('unsure');
  box.replaceChildren(document.createTextNode(unsure.length
    ? `Check ${unsure.length} ${unit}(s): there SAM 2's own estimate of its mask (predicted IoU) is well below this `
      + `structure's other ${unit}s${estimate}, or it barely sees the structure (object score < ${BARELY_THERE}). `
    : `No ${unit} stands out: SAM 2's own estimate of its mask (predicted IoU) is alike on every ${unit} it segmented`
      + `${estimate}. It is the model's guess, not a check against a reference.`));
  for (const s of unsure) {
    const button = Object.assign(document.createElement('button'), { type: 'button', textContent: `${s.slice}` });
    button.title = `object score ${s.object_score}, predicted IoU ${s.predicted_iou}, area ${s.area}`;
    button.dataset.slice = s.slice;
    button.addEventListener('click', () => goToSlice(s.slice));
    box.append(button);
  }
}


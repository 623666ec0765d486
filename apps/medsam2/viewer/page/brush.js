// The brush and the eraser: the voxels of the shown slice whose centres lie within the brush's
// radius (CSS pixels) of the drawn path, measured on screen so the brush is as round as drawn on
// any grid, flipped or not. Two modes, named on screen: "manual" changes exactly those voxels
// and nothing else (kept over the structure's later results until undone); "re-propagate"
// sends the slice as it is after the edit as that slice's mask prompt (`slice_masks`), and
// SAM 2 segments the structure again from it.

import { gzip, readBox } from './labelmap.js';

// {slice, add, voxels: [i + ni * j, ...]} of the path [[x, y], ...] on the shown slice k
export function brushedVoxels(view, path, radius, add) {
  const k = view.currentSlice();
  const [ni, nj] = view.dims;
  const origin = view.canvasOf([0, 0, k]);
  const across = (a) => Math.hypot(a[0] - origin[0], a[1] - origin[1]);
  const reach = [view.canvasOf([1, 0, k]), view.canvasOf([0, 1, k])].map((p) => Math.ceil(radius / across(p)) + 1);
  const picked = new Set();
  for (const [x, y] of densify(path, Math.max(1, radius / 2))) {
    const centre = view.pointAt(x, y);
    if (!centre) continue;
    const [ci, cj] = [Math.round(centre[0]), Math.round(centre[1])];
    for (let i = Math.max(0, ci - reach[0]); i <= Math.min(ni - 1, ci + reach[0]); i += 1) {
      for (let j = Math.max(0, cj - reach[1]); j <= Math.min(nj - 1, cj + reach[1]); j += 1) {
        const p = view.canvasOf([i, j, k]);
        if (Math.hypot(p[0] - x, p[1] - y) <= radius) picked.add(i + ni * j);
      }
    }
  }
  return { slice: k, add, voxels: [...picked].sort((a, b) => a - b) };
}

// points along the path no farther apart than `step`
function densify(path, step) {
  const out = [path[0]];
  for (let n = 1; n < path.length; n += 1) {
    const [a, b] = [path[n - 1], path[n]];
    const parts = Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1]) / step);
    for (let s = 1; s <= parts; s += 1) out.push([a[0] + (b[0] - a[0]) * s / parts, a[1] + (b[1] - a[1]) * s / parts]);
  }
  return out;
}

// slice `slice` of `value` after the edit, inside the box of what it has there and what was
// painted: {box, voxels} (i fastest), or null when nothing is left on the slice
export function sliceAfter(shown, value, edit) {
  const [ni, nj] = shown.dims;
  const k = edit.slice;
  const mask = shown.mask(value);
  let [i0, i1, j0, j1] = [ni, -1, nj, -1];
  const widen = (i, j) => { i0 = Math.min(i0, i); i1 = Math.max(i1, i); j0 = Math.min(j0, j); j1 = Math.max(j1, j); };
  for (let j = 0; j < nj; j += 1) {
    const row = ni * (j + nj * k);
    for (let i = 0; i < ni; i += 1) if (mask.voxels[row + i]) widen(i, j);
  }
  for (const v of edit.voxels) widen(v % ni, Math.floor(v / ni));
  if (i1 < 0) return null;
  const box = [[i0, i1 + 1], [j0, j1 + 1], [k, k + 1]];
  const voxels = readBox(mask.voxels, shown.dims, box);
  const width = i1 + 1 - i0;
  for (const v of edit.voxels) voxels[(v % ni) - i0 + width * (Math.floor(v / ni) - j0)] = edit.add ? 1 : 0;
  return voxels.some((x) => x) ? { box, voxels } : null;
}

// a manual edit drawn on `value`: exactly its voxels change
export function paintManual(shown, value, edit) {
  if (!edit.voxels.length) return;
  const region = sliceAfter(shown, value, edit);
  const [ni, nj] = shown.dims;
  const k = edit.slice;
  shown.writeBox(value, [[0, ni], [0, nj], [k, k + 1]], null);
  if (region) shown.writeBox(value, region.box, region.voxels);
}

// the structure's base again, then each of its manual edits in the order drawn
export function redrawManual(shown, value, edits) {
  shown.restoreBase(value);
  for (const edit of edits) if (edit.kind === 'paint') paintManual(shown, value, edit);
}

// {box, voxels} of one slice as the app's slice_masks entry
export async function sliceMaskField(region) {
  const [[i0, i1], [j0, j1], [k]] = region.box;
  const packed = await gzip(region.voxels);
  let text = '';
  for (let n = 0; n < packed.length; n += 0x8000) text += String.fromCharCode(...packed.subarray(n, n + 0x8000));
  return { slice: k, i: [i0, i1], j: [j0, j1], data: btoa(text) };
}

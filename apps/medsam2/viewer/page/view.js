// The image on screen: one slice of the study drawn from its voxels into a 2D canvas, the
// structures over it, and the map between the screen and the app's voxels.
//
// The slice is the file's own grid, its axes permuted and flipped to the nearest RAS axes and
// never resampled (an oblique series is shown straightened, as its voxels are), in the
// radiological convention: the patient's right on the screen's left, anterior (or superior)
// up. Every canvas pixel shows the voxel `pixelVoxel` names and the pointer is mapped by the
// same function, so the voxel under the pointer is the voxel drawn there.
//
// Drawn on the CPU (a slice is a few hundred thousand pixels): no upload of the whole study to
// a GPU, which with software WebGL (a hospital's virtual desktop) took 15-20 s per study and
// again per window change (docs/performance.md).

import { readNifti } from './nifti.js';

export const LABEL_COLOURS = ['#ff0000', '#00ff00', '#0000ff', '#ffff00', '#00ffff', '#ff00ff', '#ffefd5', '#0000cd'];
const OPACITY = 0.35;
// the plane across RAS axis d shows RAS axes [columns, rows], both drawn reversed: the screen's
// right is the patient's left (RAS x falls), its bottom posterior or inferior
const PLANE_AXES = { 0: [1, 2], 1: [0, 2], 2: [0, 1] };
const PERMUTATIONS = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];

// The file axis shown along each RAS axis (the permutation whose direction cosines are largest)
// and whether it runs against it.
export function rasAxes(affine) {
  const cosines = [0, 1, 2].map((a) => {
    const column = [0, 1, 2].map((d) => affine[d][a]);
    const norm = Math.hypot(...column) || 1;
    return column.map((c) => c / norm);
  });
  let best = PERMUTATIONS[0];
  let bestScore = -1;
  for (const p of PERMUTATIONS) {
    const score = p.reduce((sum, a, d) => sum + Math.abs(cosines[a][d]), 0);
    if (score > bestScore + 1e-9) [best, bestScore] = [p, score];
  }
  return {
    axisOf: best,
    flipped: best.map((a, d) => cosines[a][d] < 0),
    spacing: best.map((a) => Math.hypot(affine[0][a], affine[1][a], affine[2][a]) || 1),
  };
}

function rgbOf(hex) {
  return [1, 3, 5].map((at) => parseInt(hex.slice(at, at + 2), 16));
}

export class VolumeView {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { alpha: false });
    this.ready = Promise.resolve();
    this.image = null;
    this.dims = null;
    this.normal = 2; // the file axis across the shown plane: 2 (k) shows the app's slices
    this.slice = 0; // the shown plane's index along `normal`
    this.cursor = [0, 0, 0]; // where the clinician is: each plane shows its own index of it
    this.window = null; // [low, high] in real values
    this.labels = null; // the LabelVolume painted over the image
    this.sent = []; // the label boxes drawn since opening (the last 100), for tests and scripts
    this.colours = LABEL_COLOURS.map(rgbOf);
    new ResizeObserver(() => this.render()).observe(canvas);
  }

  // Show the NIfTI in buffer (the study, or first one slice of it: see api.js fetchVolume) at
  // slice k (null: the middle one) in the display window [low, high] (null: a robust range).
  // steps: an object the ms since `started` of decoding and of the first draw go into (or null)
  open(buffer, { window = null, slice = null, steps = null, started = 0 } = {}) {
    const image = readNifti(buffer);
    if (steps) steps.decoded_ms = Math.round(performance.now() - started);
    Object.assign(image, rasAxes(image.affine));
    this.image = image;
    this.dims = image.dims;
    this.labels = null;
    this.lut = null;
    this.range = null;
    this.window = window || this.robustRange();
    this.cursor = image.dims.map((n) => Math.floor(n / 2));
    this.cursor[2] = Math.max(0, Math.min(image.dims[2] - 1, slice ?? this.cursor[2]));
    this.normal = 2; // a study opens on the app's slices
    this.slice = this.cursor[this.normal];
    this.render();
    if (steps) steps.drawn_ms = Math.round(performance.now() - started);
  }

  // Display window [low, high] in the image's values; null: a robust range of them.
  setWindow(range) {
    if (!this.image) return;
    const [low, high] = range || this.robustRange();
    if (this.window && this.window[0] === low && this.window[1] === high) return;
    this.window = [low, high];
    this.lut = null;
    this.render();
  }

  // [min, max] of the real values (a pass over the study, once)
  valueRange() {
    if (!this.range) {
      const { voxels, slope, inter } = this.image;
      let min = Infinity;
      let max = -Infinity;
      for (let n = 0; n < voxels.length; n += 1) {
        const v = voxels[n];
        if (v < min) min = v;
        if (v > max) max = v;
      }
      this.range = [min, max].map((v) => v * slope + inter).sort((a, b) => a - b);
    }
    return this.range;
  }

  // 1st to 99th percentile of a sample of the values
  robustRange() {
    const { voxels, slope, inter } = this.image;
    const step = Math.max(1, Math.floor(voxels.length / 200000));
    const sample = new Float64Array(Math.ceil(voxels.length / step));
    for (let n = 0, m = 0; n < voxels.length; n += step, m += 1) sample[m] = voxels[n] * slope + inter;
    sample.sort();
    const low = sample[Math.floor(0.01 * (sample.length - 1))];
    const high = sample[Math.floor(0.99 * (sample.length - 1))];
    return high > low ? [low, high] : [low, low + 1];
  }

  // Whether the values look like CT in Hounsfield units (air near -1000).
  looksLikeCT() {
    return Boolean(this.image) && this.valueRange()[0] <= -900;
  }

  get dpr() {
    return window.devicePixelRatio || 1;
  }

  inside(v) {
    return v.every((x, d) => x >= 0 && x < this.dims[d]);
  }

  // Where the slice lies on the canvas (device pixels): for its columns and rows, the RAS axis,
  // the file axis, the count, the first pixel and the pixels per voxel.
  layout() {
    const { axisOf, spacing } = this.image;
    const [colRas, rowRas] = PLANE_AXES[axisOf.indexOf(this.normal)];
    const width = this.canvas.width;
    const height = this.canvas.height;
    const n = [this.dims[axisOf[colRas]], this.dims[axisOf[rowRas]]];
    const mm = [n[0] * spacing[colRas], n[1] * spacing[rowRas]];
    const scale = Math.min(width / mm[0], height / mm[1]);
    const size = [mm[0] * scale, mm[1] * scale];
    const at = [(width - size[0]) / 2, (height - size[1]) / 2];
    return [colRas, rowRas].map((ras, s) => ({ ras, axis: axisOf[ras], n: n[s], start: at[s], step: size[s] / n[s] }));
  }

  // the file's index along one screen axis of the device pixel at p (-1: off the image)
  static indexAlong(side, flipped, p) {
    const onScreen = Math.floor((p + 0.5 - side.start) / side.step);
    if (onScreen < 0 || onScreen >= side.n) return -1;
    return flipped ? onScreen : side.n - 1 - onScreen; // reversed on screen; a flipped axis twice
  }

  // the file's voxel [i, j, k] drawn at device pixel (px, py), or null off the image
  pixelVoxel(px, py) {
    const sides = this.layout();
    const voxel = [0, 0, 0];
    voxel[this.normal] = this.slice;
    for (const [s, p] of [[0, px], [1, py]]) {
      const index = VolumeView.indexAlong(sides[s], this.image.flipped[sides[s].ras], p);
      if (index < 0) return null;
      voxel[sides[s].axis] = index;
    }
    return voxel;
  }

  // CSS pixels on the canvas -> the app's voxel [i, j, k], or null off the image
  voxelAt(x, y) {
    if (!this.image) return null;
    return this.pixelVoxel(Math.floor(x * this.dpr), Math.floor(y * this.dpr));
  }

  // CSS pixels -> [i, j, k] with fractions (a voxel's centre is a whole number), for outlines
  // and strokes; the inverse of canvasOf; null off the image
  pointAt(x, y) {
    if (!this.image) return null;
    const voxel = [0, 0, 0];
    voxel[this.normal] = this.slice;
    const sides = this.layout();
    for (const [s, p] of [[0, x * this.dpr], [1, y * this.dpr]]) {
      const side = sides[s];
      const onScreen = (p - side.start) / side.step - 0.5;
      if (onScreen < -0.5 || onScreen > side.n - 0.5) return null;
      voxel[side.axis] = this.image.flipped[side.ras] ? onScreen : side.n - 1 - onScreen;
    }
    return voxel;
  }

  // the app's voxel -> CSS pixels on the canvas at the centre of its square (on the shown plane)
  canvasOf(voxel) {
    if (!this.image) return null;
    const position = this.layout().map((side) => {
      const index = voxel[side.axis];
      const onScreen = this.image.flipped[side.ras] ? index : side.n - 1 - index;
      return (side.start + (onScreen + 0.5) * side.step) / this.dpr;
    });
    return position;
  }

  // the shown plane's index along its normal (the app's slice k in the k plane)
  currentSlice() {
    return this.dims ? this.slice : 0;
  }

  goToSlice(index) {
    if (!this.dims) return;
    const slice = Math.max(0, Math.min(this.dims[this.normal] - 1, index));
    if (slice === this.slice) return;
    this.slice = slice;
    this.cursor[this.normal] = slice;
    this.render();
  }

  // Show the plane across file axis `normal` (2: the app's slices) through the cursor; a click
  // on `voxel` moves the cursor there first, so the other planes go through it.
  setPlane(normal, voxel = null) {
    if (!this.dims) return;
    if (voxel) this.cursor = voxel.map((v, d) => Math.max(0, Math.min(this.dims[d] - 1, Math.round(v))));
    this.normal = normal;
    this.slice = this.cursor[normal];
    this.render();
  }

  // the anatomical name of the plane across file axis `normal` (by the RAS axis nearest it)
  planeName(normal) {
    return this.image ? ['sagittal', 'coronal', 'axial'][this.image.axisOf.indexOf(normal)] : '';
  }

  // grey level (0-255) of each stored value, for the integer types up to 16 bits (else null)
  greyTable() {
    const { voxels, slope, inter } = this.image;
    const Type = voxels.constructor;
    if (![Uint8Array, Int8Array, Int16Array, Uint16Array].includes(Type)) return null;
    if (!this.lut) {
      const bits = 8 * Type.BYTES_PER_ELEMENT;
      const offset = Type === Int8Array || Type === Int16Array ? 2 ** (bits - 1) : 0;
      const table = new Uint8Array(2 ** bits);
      for (let n = 0; n < table.length; n += 1) table[n] = this.grey((n - offset) * slope + inter);
      this.lut = { table, offset };
    }
    return this.lut;
  }

  grey(value) {
    const [low, high] = this.window;
    const g = high > low ? ((value - low) / (high - low)) * 255 : (value >= high ? 255 : 0);
    return g <= 0 ? 0 : g >= 255 ? 255 : Math.round(g);
  }

  // Draw the shown slice with the structures over it, every canvas pixel from its voxel.
  render() {
    const { canvas } = this;
    const width = Math.max(1, Math.round(canvas.clientWidth * this.dpr));
    const height = Math.max(1, Math.round(canvas.clientHeight * this.dpr));
    if (canvas.width !== width || canvas.height !== height) [canvas.width, canvas.height] = [width, height];
    if (!this.image) return;
    const { voxels, slope, inter, flipped, rgb } = this.image;
    const stride = [1, this.dims[0], this.dims[0] * this.dims[1]];
    const [cols, rows] = this.layout().map((side, s) => {
      const offsets = new Int32Array(s ? height : width);
      for (let p = 0; p < offsets.length; p += 1) {
        const index = VolumeView.indexAlong(side, flipped[side.ras], p);
        offsets[p] = index < 0 ? -1 : index * stride[side.axis];
      }
      return offsets;
    });
    const base = this.slice * stride[this.normal];
    const lut = this.greyTable();
    const map = this.labels?.map;
    const tint = this.colours.map((c) => c.map((v) => v * OPACITY));
    const pixels = this.ctx.createImageData(width, height);
    const out = new Uint32Array(pixels.data.buffer); // little-endian RGBA: 0xAABBGGRR
    for (let y = 0; y < height; y += 1) {
      const row = rows[y];
      const line = y * width;
      if (row < 0) { out.fill(0xff000000, line, line + width); continue; }
      for (let x = 0; x < width; x += 1) {
        const col = cols[x];
        if (col < 0) { out[line + x] = 0xff000000; continue; }
        const at = base + row + col;
        const label = map ? map[at] : 0;
        if (rgb) { // a colour picture: its own colours, as they are
          const [r, g, b] = [rgb[3 * at], rgb[3 * at + 1], rgb[3 * at + 2]];
          const t = label ? tint[(label - 1) % tint.length] : null;
          const mix = (v, c) => (t ? Math.round(v * (1 - OPACITY) + c) : v);
          out[line + x] = 0xff000000 | (mix(b, t?.[2]) << 16) | (mix(g, t?.[1]) << 8) | mix(r, t?.[0]);
          continue;
        }
        const value = voxels[at];
        const g = lut ? lut.table[value + lut.offset] : this.grey(value * slope + inter);
        if (label) {
          const t = tint[(label - 1) % tint.length];
          const keep = g * (1 - OPACITY);
          out[line + x] = 0xff000000 | (Math.round(keep + t[2]) << 16) | (Math.round(keep + t[1]) << 8)
            | Math.round(keep + t[0]);
        } else out[line + x] = 0xff000000 | (g << 16) | (g << 8) | g;
      }
    }
    this.ctx.putImageData(pixels, 0, 0);
    if (this.marker) this.drawMarker();
    this.onRendered?.();
  }

  // where the main view's plane crosses this one: a thin line
  drawMarker() {
    const { normal, index } = this.marker;
    const along = [0, 1, 2].find((d) => d !== normal && d !== this.normal);
    const ends = [0, this.dims[along] - 1].map((n) => {
      const voxel = [...this.cursor];
      voxel[normal] = index;
      voxel[along] = n;
      return this.canvasOf(voxel);
    });
    if (ends.some((p) => !p)) return;
    const { ctx } = this;
    ctx.save();
    ctx.scale(this.dpr, this.dpr);
    ctx.strokeStyle = 'rgba(255, 214, 80, 0.7)';
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(...ends[0]);
    ctx.lineTo(...ends[1]);
    ctx.stroke();
    ctx.restore();
  }

  // Show what changed in labels (a LabelVolume) since its last paint: the shown slice is drawn
  // again only when the changed box crosses it, once a frame. onPainted(box): other views too.
  paint(labels) {
    this.labels = labels;
    const box = labels.takeDirty();
    if (!box || !this.dims) return;
    this.sent = [...this.sent.slice(-99), box];
    this.onPainted?.(box);
    this.changed(box);
  }

  // the box [[i0, i1], [j0, j1], [k0, k1]] of the structures changed: drawn again if it crosses the plane
  changed(box) {
    const [a, b] = box[this.normal];
    if (this.slice < a || this.slice >= b || this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  // What `main` shows (its study, window and structures) on the plane across `normal` through
  // main's cursor: one of the other two planes of the three-view layout. Drawn only when it changed.
  mirror(main, normal) {
    if (!main.image) return;
    const slice = main.cursor[normal];
    const same = this.image === main.image && this.window === main.window && this.labels === main.labels
      && this.normal === normal && this.slice === slice && this.marker?.normal === main.normal
      && this.marker?.index === main.slice;
    this.cursor = [...main.cursor];
    this.marker = { normal: main.normal, index: main.slice }; // main's plane, drawn as a line here
    if (same) return;
    if (this.image !== main.image) Object.assign(this, { image: main.image, dims: main.dims, range: null, lut: null });
    if (this.window !== main.window) Object.assign(this, { window: main.window, lut: null });
    Object.assign(this, { labels: main.labels, normal, slice });
    this.render();
  }

  // resolves once what paint() drew is on screen
  async drawn() {
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  }
}

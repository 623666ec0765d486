// The image on screen: NiiVue renders it; this maps between the screen and the app's voxels.
//
// NiiVue does not resample a volume for display: it permutes and flips the file's voxel axes
// to the nearest RAS axes (its `permRAS`) and draws that grid as it is, also for an oblique
// series (whose true tilt it ignores on screen). Its fractions (`frac`) count along that
// permuted grid. So the voxel under the pointer is found by undoing the permutation, never
// through millimetres: the file's oblique affine and NiiVue's straightened one disagree by
// up to several voxels on a tilted series.

import { Niivue, NVImage, SLICE_TYPE } from './vendor/niivue.js';

// NiiVue's drawing palette for values 1.. (its default "$itksnap"-like lookup table)
export const LABEL_COLOURS = ['#ff0000', '#00ff00', '#0000ff', '#ffff00', '#00ffff', '#ff00ff', '#ffefd5', '#0000cd'];

// NiiVue's view of the RAS axis d (0: x, 1: y, 2: z) as a slice: the slice plane across it
const VIEW_ACROSS = [SLICE_TYPE.SAGITTAL, SLICE_TYPE.CORONAL, SLICE_TYPE.AXIAL];

export class VolumeView {
  constructor(glCanvas) {
    this.nv = new Niivue({
      backColor: [0, 0, 0, 1],
      show3Dcrosshair: false,
      crosshairWidth: 0, // the page draws its own marks; a crosshair would hide voxels
      dragAndDropEnabled: false,
      loadingText: '', // the page says what it is doing
      isRadiologicalConvention: true, // patient's right on the screen's left, as radiologists read
      isNearestInterpolation: true,
    });
    this.glCanvas = glCanvas;
    this.ready = this.nv.attachToCanvas(glCanvas).then(() => {
      // the overlay's colours are the swatches' colours, value for value (0: nothing)
      const rgb = LABEL_COLOURS.map((hex) => [1, 3, 5].map((at) => parseInt(hex.slice(at, at + 2), 16)));
      this.nv.setDrawColormap({
        R: [0, ...rgb.map((c) => c[0])], G: [0, ...rgb.map((c) => c[1])], B: [0, ...rgb.map((c) => c[2])],
        A: [0, ...rgb.map(() => 255)], I: [0, ...rgb.map((_, n) => n + 1)], labels: ['', ...rgb.map((_, n) => `${n + 1}`)],
      });
    });
    this.dims = null;
  }

  // Show the NIfTI in buffer (the study, or first one slice of it: see api.js fetchVolume) with the
  // display window [low, high] set before its first draw (null: NiiVue's robust range): a window
  // changed afterwards redraws the whole volume.
  // steps: an object the ms since `started` of decoding and of the first draw go into (or null)
  async open(buffer, name, window = null, steps = null, started = 0) {
    await this.ready;
    const options = window ? { cal_min: window[0], cal_max: window[1] } : {};
    const image = await NVImage.loadFromUrl({ url: buffer, name, ...options });
    if (steps) steps.decoded_ms = Math.round(performance.now() - started);
    this.nv.closeDrawing();
    this.unsent = null;
    for (const volume of [...this.nv.volumes]) this.nv.removeVolume(volume);
    this.nv.addVolume(image);
    if (steps) steps.drawn_ms = Math.round(performance.now() - started);
    this.dims = [image.hdr.dims[1], image.hdr.dims[2], image.hdr.dims[3]];
    // permRAS[d] = +-(file axis + 1) shown along RAS axis d; negative: the axis is flipped
    this.axisOf = image.permRAS.map((p) => Math.abs(p) - 1);
    this.flipped = image.permRAS.map((p) => p < 0);
    this.dimsRAS = [image.dimsRAS[1], image.dimsRAS[2], image.dimsRAS[3]];
    // show the slices the app prompts on (its k axis), whichever RAS axis they lie across
    this.nv.setSliceType(VIEW_ACROSS[this.axisOf.indexOf(2)]);
    this.goToVoxel(this.dims.map((n) => Math.floor(n / 2)));
  }

  // Display window [low, high] in the image's values; null: NiiVue's own robust range.
  setWindow(range) {
    const image = this.nv.volumes[0];
    if (!image) return;
    const [low, high] = range || [image.robust_min, image.robust_max];
    if (image.cal_min === low && image.cal_max === high) return; // unchanged: no redraw of the whole volume
    [image.cal_min, image.cal_max] = [low, high];
    this.nv.updateGLVolume();
  }

  // Whether the values look like CT in Hounsfield units (air near -1000).
  looksLikeCT() {
    const image = this.nv.volumes[0];
    return Boolean(image) && image.global_min <= -900;
  }

  get dpr() {
    return this.nv.uiData?.dpr || window.devicePixelRatio || 1;
  }

  inside(v) {
    return v.every((x, d) => x >= 0 && x < this.dims[d]);
  }

  // NiiVue's fraction of its RAS-permuted grid -> the file's voxel [i, j, k]
  voxelOfFrac(frac) {
    const voxel = [0, 0, 0];
    for (let d = 0; d < 3; d += 1) {
      const n = this.dimsRAS[d];
      const r = Math.min(n - 1, Math.max(-1, Math.floor(frac[d] * n))); // -1: off the image
      const axis = this.axisOf[d];
      voxel[axis] = r < 0 ? -1 : (this.flipped[d] ? this.dims[axis] - 1 - r : r);
    }
    return voxel;
  }

  // the file's voxel -> NiiVue's fraction at the voxel's centre
  fracOfVoxel(voxel) {
    return [0, 1, 2].map((d) => {
      const axis = this.axisOf[d];
      const r = this.flipped[d] ? this.dims[axis] - 1 - voxel[axis] : voxel[axis];
      return (r + 0.5) / this.dimsRAS[d];
    });
  }

  // CSS pixels on the canvas -> the app's voxel [i, j, k], or null off the image
  voxelAt(x, y) {
    if (!this.dims) return null;
    const frac = this.nv.canvasPos2frac([x * this.dpr, y * this.dpr]);
    if (!frac || frac[0] < 0 || frac.some((f) => f < 0 || f >= 1)) return null;
    const voxel = this.voxelOfFrac(frac);
    return this.inside(voxel) ? voxel : null;
  }

  // the app's voxel -> CSS pixels on the canvas (null when not on the shown slice)
  canvasOf(voxel) {
    const pos = this.nv.frac2canvasPos(this.fracOfVoxel(voxel));
    return pos ? [pos[0] / this.dpr, pos[1] / this.dpr] : null;
  }

  crosshairVoxel() {
    return this.voxelOfFrac(this.nv.scene.crosshairPos);
  }

  currentSlice() {
    return this.dims ? this.crosshairVoxel()[2] : 0;
  }

  goToVoxel(voxel) {
    this.nv.scene.crosshairPos = Float32Array.from(this.fracOfVoxel(voxel));
    this.nv.drawScene();
  }

  goToSlice(k) {
    const voxel = this.crosshairVoxel();
    voxel[2] = Math.max(0, Math.min(this.dims[2] - 1, k));
    this.goToVoxel(voxel);
  }

  // Draw what changed in labels (a LabelVolume) since its last paint over the image: the
  // changed box is copied into NiiVue's drawing (its RAS-permuted grid), then sent once a frame.
  paint(labels) {
    const box = labels.takeDirty();
    if (!box || !this.dims) return;
    if (!this.nv.drawBitmap || this.nv.drawBitmap.length !== labels.size) {
      this.nv.createEmptyDrawing();
      this.nv.setDrawOpacity(0.35);
      this.nv.drawScene();
    }
    const bitmap = this.nv.drawBitmap;
    // the drawing's index of file voxel [i, j, k] = base + i * stride[0] + j * stride[1] + k * stride[2]
    const rasStride = [1, this.dimsRAS[0], this.dimsRAS[0] * this.dimsRAS[1]];
    const stride = [0, 0, 0];
    let base = 0;
    for (let d = 0; d < 3; d += 1) {
      const axis = this.axisOf[d];
      stride[axis] = this.flipped[d] ? -rasStride[d] : rasStride[d];
      if (this.flipped[d]) base += (this.dims[axis] - 1) * rasStride[d];
    }
    const [[i0, i1], [j0, j1], [k0, k1]] = box;
    const [ni, nj] = this.dims;
    const map = labels.map;
    for (let k = k0; k < k1; k += 1) {
      for (let j = j0; j < j1; j += 1) {
        const row = ni * (j + nj * k);
        let at = base + i0 * stride[0] + j * stride[1] + k * stride[2];
        for (let i = i0; i < i1; i += 1, at += stride[0]) bitmap[at] = map[row + i];
      }
    }
    // the same box on the drawing's RAS grid, added to what the next frame sends
    const ras = [0, 1, 2].map((d) => {
      const [lo, hi] = box[this.axisOf[d]];
      const n = this.dims[this.axisOf[d]];
      return this.flipped[d] ? [n - hi, n - lo] : [lo, hi];
    });
    this.unsent = this.unsent ? this.unsent.map(([lo, hi], d) => [Math.min(lo, ras[d][0]), Math.max(hi, ras[d][1])]) : ras;
    if (!this.refreshQueued) {
      this.refreshQueued = true;
      requestAnimationFrame(() => {
        this.refreshQueued = false;
        this.sendDrawing();
      });
    }
  }

  // Send only the changed box of the drawing to its texture (NiiVue's refreshDrawing sends all
  // of it, and scans it: a whole CT's worth of bytes for each streamed slice).
  sendDrawing() {
    const box = this.unsent;
    this.unsent = null;
    if (!box || !this.nv.drawTexture) return;
    const { gl } = this.nv;
    const [[x0, x1], [y0, y1], [z0, z1]] = box;
    gl.activeTexture(gl.TEXTURE7); // NiiVue's drawing texture unit
    gl.bindTexture(gl.TEXTURE_3D, this.nv.drawTexture);
    const unpack = [[gl.UNPACK_ALIGNMENT, 1], [gl.UNPACK_ROW_LENGTH, this.dimsRAS[0]], [gl.UNPACK_IMAGE_HEIGHT, this.dimsRAS[1]],
      [gl.UNPACK_SKIP_PIXELS, x0], [gl.UNPACK_SKIP_ROWS, y0], [gl.UNPACK_SKIP_IMAGES, z0]];
    const before = unpack.map(([name]) => [name, gl.getParameter(name)]);
    for (const [name, value] of unpack) gl.pixelStorei(name, value);
    gl.texSubImage3D(gl.TEXTURE_3D, 0, x0, y0, z0, x1 - x0, y1 - y0, z1 - z0, gl.RED, gl.UNSIGNED_BYTE, this.nv.drawBitmap);
    for (const [name, value] of before) gl.pixelStorei(name, value);
    this.sent = [...(this.sent || []).slice(-99), box]; // what reached the texture, for tests and scripts
    this.nv.drawScene();
  }

  // resolves once what paint() sent is on screen
  async drawn() {
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  }
}

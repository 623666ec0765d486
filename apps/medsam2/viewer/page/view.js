// The image on screen: NiiVue renders it; this maps between the screen and the app's voxels.
//
// NiiVue shows a volume resliced to RAS and its own voxel helpers count in that resliced
// order. The app's voxels [i, j, k] are the file's own order, so every conversion here
// goes through world millimetres and the file's affine (the one the app wrote).

import { Niivue, NVImage, SLICE_TYPE } from './vendor/niivue.js';
import { toNiftiBytes } from './labelmap.js';

// NiiVue's drawing palette for values 1.. (its default "$itksnap"-like lookup table)
export const LABEL_COLOURS = ['#ff0000', '#00ff00', '#0000ff', '#ffff00', '#00ffff', '#ff00ff', '#ffefd5', '#0000cd'];

function inverse4(m) {
  // affine inverse: invert the 3x3 part, then the translation
  const [a, b, c] = [m[0], m[1], m[2]];
  const det = a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0]);
  const r = [
    [(b[1] * c[2] - b[2] * c[1]) / det, (a[2] * c[1] - a[1] * c[2]) / det, (a[1] * b[2] - a[2] * b[1]) / det],
    [(b[2] * c[0] - b[0] * c[2]) / det, (a[0] * c[2] - a[2] * c[0]) / det, (a[2] * b[0] - a[0] * b[2]) / det],
    [(b[0] * c[1] - b[1] * c[0]) / det, (a[1] * c[0] - a[0] * c[1]) / det, (a[0] * b[1] - a[1] * b[0]) / det],
  ];
  const t = [a[3], b[3], c[3]];
  return r.map((row) => [...row, -(row[0] * t[0] + row[1] * t[1] + row[2] * t[2])]);
}

function apply(m, v) {
  return [0, 1, 2].map((r) => m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] + m[r][3]);
}

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
    this.ready = this.nv.attachToCanvas(glCanvas);
    this.dims = null;
  }

  async open(buffer, name) {
    await this.ready;
    const image = await NVImage.loadFromUrl({ url: buffer, name });
    this.nv.closeDrawing();
    for (const volume of [...this.nv.volumes]) this.nv.removeVolume(volume);
    this.nv.addVolume(image);
    this.nv.setSliceType(SLICE_TYPE.AXIAL);
    const affine = image.hdr.affine.map((row) => row.map(Number));
    this.affine = affine;
    this.inverse = inverse4(affine);
    this.dims = [image.hdr.dims[1], image.hdr.dims[2], image.hdr.dims[3]];
    this.goToVoxel(this.dims.map((n) => Math.floor(n / 2)));
  }

  // Display window [low, high] in the image's values; null: NiiVue's own robust range.
  setWindow(range) {
    const image = this.nv.volumes[0];
    if (!image) return;
    [image.cal_min, image.cal_max] = range || [image.robust_min, image.robust_max];
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

  voxelOfFrac(frac) {
    const mm = this.nv.frac2mm(frac);
    return apply(this.inverse, [mm[0], mm[1], mm[2]]).map((x) => Math.round(x));
  }

  // CSS pixels on the canvas -> the app's voxel [i, j, k], or null off the image
  voxelAt(x, y) {
    if (!this.dims) return null;
    const frac = this.nv.canvasPos2frac([x * this.dpr, y * this.dpr]);
    if (!frac || frac[0] < 0) return null;
    const voxel = this.voxelOfFrac(frac);
    return this.inside(voxel) ? voxel : null;
  }

  // the app's voxel -> CSS pixels on the canvas (null when not on the shown slice)
  canvasOf(voxel) {
    const frac = this.nv.mm2frac(apply(this.affine, voxel));
    const pos = this.nv.frac2canvasPos(frac);
    return pos ? [pos[0] / this.dpr, pos[1] / this.dpr] : null;
  }

  crosshairVoxel() {
    return this.voxelOfFrac(this.nv.scene.crosshairPos);
  }

  currentSlice() {
    return this.dims ? this.crosshairVoxel()[2] : 0;
  }

  goToVoxel(voxel) {
    this.nv.scene.crosshairPos = this.nv.mm2frac(apply(this.affine, voxel));
    this.nv.drawScene();
  }

  goToSlice(k) {
    const voxel = this.crosshairVoxel();
    voxel[2] = Math.max(0, Math.min(this.dims[2] - 1, k));
    this.goToVoxel(voxel);
  }

  // Show a label map (a Mask with values 1..) over the image; null removes it.
  async showLabels(labelMap) {
    if (!labelMap) {
      this.nv.closeDrawing();
      this.nv.drawScene();
      return;
    }
    const bytes = toNiftiBytes(labelMap);
    const image = await NVImage.loadFromUrl({ url: bytes.buffer, name: 'labels.nii' });
    if (!this.nv.loadDrawing(image)) throw new Error('the mask does not match the image grid');
    this.nv.setDrawOpacity(0.35);
    this.nv.drawScene();
  }
}

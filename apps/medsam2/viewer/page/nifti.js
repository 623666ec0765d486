// A NIfTI-1 volume as the page shows it: its voxels as they are stored (no copy where the bytes
// allow it), the scaling to real values, and the voxel-to-RAS affine chosen as nibabel chooses
// it (sform, else qform), so the page's grid is the app's (tests/test_viewer_nifti.py).

const NIFTI1_HEADER_SIZE = 348;
const RGB24 = 128; // NIfTI's colour type: three bytes per voxel
const ARRAYS = { 2: Uint8Array, 4: Int16Array, 8: Int32Array, 16: Float32Array, 64: Float64Array, 256: Int8Array,
  512: Uint16Array, 768: Uint32Array };

// ITU-R BT.601 luma of interleaved RGB bytes
function luma(rgb) {
  const out = new Uint8Array(rgb.length / 3);
  for (let n = 0, m = 0; n < out.length; n += 1, m += 3) out[n] = Math.round(0.299 * rgb[m] + 0.587 * rgb[m + 1] + 0.114 * rgb[m + 2]);
  return out;
}

// the voxels from byte `offset` of buffer as `Type`; copied only when the offset is not aligned
function typedVoxels(buffer, offset, Type, count) {
  if (offset % Type.BYTES_PER_ELEMENT === 0) return new Type(buffer, offset, count);
  return new Type(buffer.slice(offset, offset + count * Type.BYTES_PER_ELEMENT));
}

// nibabel's qform: rotation from the quaternion (b, c, d), the pixel sizes with qfac on the third
function qformAffine(view) {
  const f = (at) => view.getFloat32(at, true);
  const [b, c, d] = [f(256), f(260), f(264)];
  const a = Math.sqrt(Math.max(0, 1 - (b * b + c * c + d * d)));
  const norm = a * a + b * b + c * c + d * d;
  const s = norm < 1e-12 ? 0 : 2 / norm;
  const r = norm < 1e-12 ? [[1, 0, 0], [0, 1, 0], [0, 0, 1]] : [
    [1 - s * (c * c + d * d), s * (b * c - a * d), s * (b * d + a * c)],
    [s * (b * c + a * d), 1 - s * (b * b + d * d), s * (c * d - a * b)],
    [s * (b * d - a * c), s * (c * d + a * b), 1 - s * (b * b + c * c)],
  ];
  const qfac = f(76) < 0 ? -1 : 1;
  const zooms = [f(80), f(84), f(88) * qfac];
  const offset = [f(268), f(272), f(276)];
  return [0, 1, 2].map((row) => [...r[row].map((v, col) => v * zooms[col]), offset[row]]);
}

function sformAffine(view) {
  return [0, 1, 2].map((row) => [0, 1, 2, 3].map((col) => view.getFloat32(280 + 16 * row + 4 * col, true)));
}

// {dims [ni, nj, nk], voxels (typed array, i fastest), slope, inter, affine (3 rows of 4), headerBytes}
export function readNifti(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < NIFTI1_HEADER_SIZE || view.getInt32(0, true) !== NIFTI1_HEADER_SIZE) {
    throw new Error('the study is not a little-endian NIfTI-1 file');
  }
  const ndim = view.getInt16(40, true);
  const dims = [1, 2, 3].map((d) => (d <= ndim ? view.getInt16(40 + 2 * d, true) : 1));
  for (let d = 4; d <= ndim; d += 1) {
    if (view.getInt16(40 + 2 * d, true) > 1) throw new Error('the study has more than three dimensions');
  }
  const rgb = view.getInt16(70, true) === RGB24;
  const Type = rgb ? Uint8Array : ARRAYS[view.getInt16(70, true)];
  if (!Type) throw new Error(`the study's voxel type (NIfTI code ${view.getInt16(70, true)}) cannot be shown`);
  const offset = Math.round(view.getFloat32(108, true));
  const count = dims[0] * dims[1] * dims[2];
  if (offset + count * (rgb ? 3 : Type.BYTES_PER_ELEMENT) > buffer.byteLength) throw new Error('the study file is cut short');
  let slope = view.getFloat32(112, true);
  let inter = view.getFloat32(116, true);
  if (!Number.isFinite(slope) || slope === 0) [slope, inter] = [1, 0]; // nibabel: no scaling
  if (!Number.isFinite(inter)) inter = 0;
  const sformCode = view.getInt16(254, true);
  const qformCode = view.getInt16(252, true);
  if (!sformCode && !qformCode) throw new Error('the study has neither an sform nor a qform');
  const colours = rgb ? new Uint8Array(buffer, offset, 3 * count) : null;
  return {
    dims,
    voxels: rgb ? luma(colours) : typedVoxels(buffer, offset, Type, count),
    rgb: colours, // a colour picture: R, G, B of each voxel (voxels then hold its luma, for ranges)
    slope,
    inter,
    affine: sformCode ? sformAffine(view) : qformAffine(view),
    headerBytes: new Uint8Array(buffer, 0, offset),
  };
}

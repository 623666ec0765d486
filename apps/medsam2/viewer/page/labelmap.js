// NIfTI-1 masks as the app returns them (uncompressed .nii, uint8) and the combined label map
// the page saves: same header, one value per structure (its 1-based position in the app's labels).

const NIFTI1_HEADER_SIZE = 348;
const DT_UINT8 = 2;

export class Mask {
  constructor(header, voxels, dims) {
    this.header = header; // the file's bytes before the voxel data (header and extensions)
    this.voxels = voxels; // Uint8Array in NIfTI (Fortran) order: i fastest, then j, then k
    this.dims = dims; // [ni, nj, nk]
  }

  static fromNifti(buffer) {
    const view = new DataView(buffer);
    if (view.getInt32(0, true) !== NIFTI1_HEADER_SIZE) {
      throw new Error('the mask is not a little-endian NIfTI-1 file (ask for result_extension .nii)');
    }
    const dims = [1, 2, 3].map((d) => view.getInt16(40 + 2 * d, true));
    const datatype = view.getInt16(70, true);
    if (datatype !== DT_UINT8) throw new Error(`the mask has NIfTI datatype ${datatype}, expected uint8`);
    const offset = Math.round(view.getFloat32(108, true));
    const count = dims[0] * dims[1] * dims[2];
    const voxels = new Uint8Array(buffer.slice(offset, offset + count));
    if (voxels.length !== count) throw new Error('the mask file is shorter than its header says');
    return new Mask(new Uint8Array(buffer.slice(0, offset)), voxels, dims);
  }

  index(i, j, k) {
    return i + this.dims[0] * (j + this.dims[1] * k);
  }

  count() {
    let n = 0;
    for (const v of this.voxels) if (v) n += 1;
    return n;
  }
}

// Combine per-structure masks into one label map; later labels do not overwrite earlier ones.
export function combine(masksByValue) {
  const entries = [...masksByValue.entries()].sort((a, b) => a[0] - b[0]);
  if (!entries.length) return null;
  const first = entries[0][1];
  const voxels = new Uint8Array(first.voxels.length);
  for (const [value, mask] of entries) {
    const src = mask.voxels;
    for (let n = 0; n < src.length; n += 1) if (src[n] && !voxels[n]) voxels[n] = value;
  }
  return new Mask(first.header, voxels, first.dims);
}

export function toNiftiBytes(mask) {
  const out = new Uint8Array(mask.header.length + mask.voxels.length);
  out.set(mask.header, 0);
  out.set(mask.voxels, mask.header.length);
  // no intensity scaling: the values are label values
  const view = new DataView(out.buffer);
  view.setFloat32(112, 1.0, true); // scl_slope
  view.setFloat32(116, 0.0, true); // scl_inter
  return out;
}

export async function gzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

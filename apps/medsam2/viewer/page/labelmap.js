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

// Structures masks (label value -> Mask) as one label map, by the app's rule
// (medsam2_engine/label_structures.py): where structures overlap, the smaller one keeps the
// voxel (a lesion stays visible inside its organ), ties to the lower value. The server makes
// the saved map by the same rule, so the map on screen is the map saved.
export function combine(masksByValue) {
  const entries = [...masksByValue.entries()].map(([value, mask]) => [value, mask, mask.count()]);
  if (!entries.length) return null;
  entries.sort((a, b) => (b[2] - a[2]) || (b[0] - a[0])); // paint the largest first, the smallest last
  const first = entries[0][1];
  const voxels = new Uint8Array(first.voxels.length);
  for (const [value, mask] of entries) {
    const src = mask.voxels;
    for (let n = 0; n < src.length; n += 1) if (src[n]) voxels[n] = value;
  }
  return new Mask(first.header, voxels, first.dims);
}

// [{values: [a, b], voxels}] for each pair of structures that share voxels
export function overlaps(masksByValue) {
  const entries = [...masksByValue.entries()].sort((a, b) => a[0] - b[0]);
  const out = [];
  for (let x = 0; x < entries.length; x += 1) {
    for (let y = x + 1; y < entries.length; y += 1) {
      const a = entries[x][1].voxels;
      const b = entries[y][1].voxels;
      let shared = 0;
      for (let n = 0; n < a.length; n += 1) if (a[n] && b[n]) shared += 1;
      if (shared) out.push({ values: [entries[x][0], entries[y][0]], voxels: shared });
    }
  }
  return out;
}

// Several masks on one grid as a 4D NIfTI [i, j, k, n] (uint8), one channel per mask.
export function stackNiftiBytes(masks) {
  const header = new Uint8Array(masks[0].header);
  const view = new DataView(header.buffer);
  view.setInt16(40, 4, true); // dim[0]: four dimensions
  view.setInt16(48, masks.length, true); // dim[4]: structures
  for (let d = 5; d <= 7; d += 1) view.setInt16(40 + 2 * d, 1, true);
  view.setFloat32(76 + 4 * 4, 1.0, true); // pixdim[4]
  view.setFloat32(112, 1.0, true); // scl_slope
  view.setFloat32(116, 0.0, true); // scl_inter
  const size = masks[0].voxels.length;
  const out = new Uint8Array(header.length + size * masks.length);
  out.set(header, 0);
  masks.forEach((mask, c) => {
    for (let n = 0; n < size; n += 1) out[header.length + c * size + n] = mask.voxels[n] ? 1 : 0;
  });
  return out;
}

// A 4D structures NIfTI (as the app's /medsam2/viewer/label sends it) -> one Mask per channel.
export function masksFromStack(buffer) {
  const view = new DataView(buffer);
  if (view.getInt32(0, true) !== NIFTI1_HEADER_SIZE) throw new Error('the saved label is not a NIfTI-1 file');
  const dims = [1, 2, 3].map((d) => view.getInt16(40 + 2 * d, true));
  const channels = view.getInt16(40, true) >= 4 ? view.getInt16(48, true) : 1;
  if (view.getInt16(70, true) !== DT_UINT8) throw new Error('the saved label is not uint8');
  const offset = Math.round(view.getFloat32(108, true));
  const header = new Uint8Array(buffer.slice(0, offset));
  const headerView = new DataView(header.buffer);
  headerView.setInt16(40, 3, true);
  headerView.setInt16(48, 1, true);
  const size = dims[0] * dims[1] * dims[2];
  const masks = [];
  for (let c = 0; c < channels; c += 1) {
    const voxels = new Uint8Array(buffer.slice(offset + c * size, offset + (c + 1) * size));
    if (voxels.length !== size) throw new Error('the saved label is shorter than its header says');
    masks.push(new Mask(header, voxels, dims));
  }
  return masks;
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

export async function gunzip(buffer) {
  const stream = new Blob([buffer]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Response(stream).arrayBuffer();
}

export async function gzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// The page's masks on the study's grid (uint8, NIfTI order), the label map it shows and saves
// (one value per structure: its 1-based position in the app's labels), and the NIfTI files of both.

const NIFTI1_HEADER_SIZE = 348;
const DT_UINT8 = 2;

export class Mask {
  constructor(header, voxels, dims) {
    this.header = header; // the file's bytes before the voxel data (header and extensions)
    this.voxels = voxels; // Uint8Array in NIfTI (Fortran) order: i fastest, then j, then k
    this.dims = dims; // [ni, nj, nk]
  }

  index(i, j, k) {
    return i + this.dims[0] * (j + this.dims[1] * k);
  }

  // voxels set (counted once, then kept up to date by whoever changes the voxels: setCount)
  count() {
    if (this.counted === undefined) {
      let n = 0;
      for (const v of this.voxels) if (v) n += 1;
      this.counted = n;
    }
    return this.counted;
  }

  setCount(n) {
    this.counted = n;
  }
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

export async function gunzip(buffer) {
  const stream = new Blob([buffer]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Response(stream).arrayBuffer();
}

export async function gzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// A region as the app's stream sends it ({i: [start, stop], j, k?, data: base64 of gzipped uint8,
// i fastest}, or {empty: true}) -> {box: [[i0, i1], [j0, j1], [k0, k1]], voxels} (null: empty).
export async function decodeRegion(region, k = null) {
  if (!region || region.empty) return null;
  const packed = Uint8Array.from(atob(region.data), (c) => c.charCodeAt(0));
  const voxels = new Uint8Array(await gunzip(packed));
  const box = [region.i, region.j, region.k || [k, k + 1]];
  if (voxels.length !== box.reduce((n, [a, b]) => n * (b - a), 1)) throw new Error('a streamed mask does not match its box');
  return { box, voxels };
}

// The structures of one study as the page shows them: one mask per label value, and the label map
// of them by the app's rule (medsam2_engine/label_structures.py: where structures overlap, the
// smaller one keeps the voxel, ties to the lower value; the server saves the map by the same rule,
// so the map on screen is the map saved), kept up to date region by region so a result that
// touches a few slices costs those slices. `dirty` collects what changed since the last paint.
// Each mask carries `box`, a box holding all its voxels (or null), and its voxel count.
export class LabelVolume {
  constructor(header, dims) {
    this.header = header; // a uint8 NIfTI header of the study's grid
    this.dims = dims;
    this.size = dims[0] * dims[1] * dims[2];
    this.masks = new Map(); // value -> Mask
    this.map = new Uint8Array(this.size);
    this.order = []; // values painted first to last (largest first)
    this.dirty = null; // [[i0, i1], [j0, j1], [k0, k1]] or null
    this.snapshot = null; // a structure as it was before a streamed result began replacing it
    this.bases = new Map(); // value -> a structure before its manual edits: {box, voxels} or null
  }

  mask(value) {
    if (!this.masks.has(value)) {
      const mask = new Mask(this.header, new Uint8Array(this.size), this.dims);
      mask.box = null;
      mask.setCount(0);
      this.masks.set(value, mask);
    }
    return this.masks.get(value);
  }

  // Replace a structure's whole mask (a saved label); null removes it.
  setWhole(value, mask) {
    const old = this.masks.get(value);
    if (mask) {
      mask.box = boxOf(mask.voxels, this.dims);
      this.masks.set(value, mask);
    } else this.masks.delete(value);
    this.recombine(joinBoxes(old?.box, mask?.box), value);
  }

  // The voxels of `value` inside box become `voxels` (null: none); outside it they stay.
  writeBox(value, box, voxels) {
    const mask = this.mask(value);
    const had = mask.count(); // counted before any voxel changes
    const m = mask.voxels;
    const [[i0, i1], [j0, j1], [k0, k1]] = box;
    const [ni, nj] = this.dims;
    const width = i1 - i0;
    let before = 0;
    let after = 0;
    let n = 0;
    for (let k = k0; k < k1; k += 1) {
      for (let j = j0; j < j1; j += 1) {
        const row = i0 + ni * (j + nj * k);
        for (let i = 0; i < width; i += 1) before += m[row + i];
        if (voxels) {
          const line = voxels.subarray(n, n + width);
          m.set(line, row);
          for (let i = 0; i < width; i += 1) after += line[i];
          n += width;
        } else m.fill(0, row, row + width);
      }
    }
    mask.setCount(had - before + after);
    if (voxels && after) mask.box = joinBoxes(mask.box, box);
    this.recombine(box, value);
  }

  // Slice k of `value` becomes `region` (decoded; null: empty) over the whole slice.
  writeSlice(value, k, region) {
    this.writeBox(value, [[0, this.dims[0]], [0, this.dims[1]], [k, k + 1]], null);
    if (region) this.writeBox(value, region.box, region.voxels);
  }

  // `value` becomes exactly `region` (decoded; null: empty): cleared where it was, written where it is.
  replace(value, region) {
    const mask = this.mask(value);
    if (mask.box) this.writeBox(value, mask.box, null);
    mask.box = null;
    if (region) this.writeBox(value, region.box, region.voxels);
  }

  // A streamed result is about to change `value`: keep it as it is, for revert().
  // Only the voxels inside its box are copied: the rest are zeros (a whole study's copy took
  // most of a second before the first request of a structure).
  keep(value) {
    const mask = this.mask(value);
    const { box } = mask;
    this.snapshot = { value, box, voxels: box ? readBox(mask.voxels, this.dims, box) : null };
  }

  // The structure as keep() found it (a cancelled stream leaves the previous mask).
  revert() {
    const kept = this.snapshot;
    this.snapshot = null;
    if (kept) this.replace(kept.value, kept.box ? { box: kept.box, voxels: kept.voxels } : null);
  }

  // `value` as it is now is what its manual edits (brush.js) are drawn over
  keepBase(value) {
    const mask = this.mask(value);
    this.bases.set(value, mask.box ? { box: mask.box, voxels: readBox(mask.voxels, this.dims, mask.box) } : null);
  }

  hasBase(value) {
    return this.bases.has(value);
  }

  // `value` as keepBase() found it (its manual edits are then drawn again over it)
  restoreBase(value) {
    this.replace(value, this.bases.get(value) || null);
  }

  // The label map inside box (null: nothing to do) by the app's overlap rule, after `value` (if
  // given) changed there. When its rank by size changed, the voxels it shares with others may
  // change hands: those lie in its own box, added. Any other change of rank: the whole map.
  recombine(box, value = null) {
    const entries = [...this.masks.entries()].map(([v, mask]) => [v, mask.count()])
      .sort((a, b) => (b[1] - a[1]) || (b[0] - a[0]));
    const order = entries.filter((e) => e[1] > 0).map((e) => e[0]);
    const others = (list) => list.filter((v) => v !== value).join();
    let area = box;
    if (others(order) !== others(this.order)) area = [[0, this.dims[0]], [0, this.dims[1]], [0, this.dims[2]]];
    else if (order.join() !== this.order.join() && value !== null) area = joinBoxes(box, this.masks.get(value)?.box);
    this.order = order;
    if (!area) return;
    const sources = order.map((v) => this.masks.get(v).voxels);
    const [[i0, i1], [j0, j1], [k0, k1]] = area;
    const [ni, nj] = this.dims;
    for (let k = k0; k < k1; k += 1) {
      for (let j = j0; j < j1; j += 1) {
        const row = ni * (j + nj * k);
        for (let i = i0; i < i1; i += 1) {
          let v = 0;
          for (let s = 0; s < sources.length; s += 1) if (sources[s][row + i]) v = order[s];
          this.map[row + i] = v;
        }
      }
    }
    this.dirty = joinBoxes(this.dirty, area);
  }

  takeDirty() {
    const dirty = this.dirty;
    this.dirty = null;
    return dirty;
  }

  // structures with voxels: value -> Mask
  shown() {
    return new Map([...this.masks].filter(([, m]) => m.count() > 0));
  }
}

function joinBoxes(a, b) {
  if (!a) return b || null;
  if (!b) return a;
  return a.map(([lo, hi], d) => [Math.min(lo, b[d][0]), Math.max(hi, b[d][1])]);
}

// the voxels of `voxels` (a whole grid of dims, i fastest) inside box, i fastest
export function readBox(voxels, dims, box) {
  const [[i0, i1], [j0, j1], [k0, k1]] = box;
  const [ni, nj] = dims;
  const width = i1 - i0;
  const out = new Uint8Array(width * (j1 - j0) * (k1 - k0));
  let n = 0;
  for (let k = k0; k < k1; k += 1) {
    for (let j = j0; j < j1; j += 1) {
      const row = i0 + ni * (j + nj * k);
      out.set(voxels.subarray(row, row + width), n);
      n += width;
    }
  }
  return out;
}

// the box [[i0, i1], [j0, j1], [k0, k1]] of a mask's set voxels (null: none)
export function boxOf(voxels, dims) {
  const [ni, nj] = dims;
  let box = null;
  for (let n = voxels.indexOf(1); n >= 0 && n < voxels.length; n += 1) {
    if (!voxels[n]) continue;
    const i = n % ni;
    const j = Math.floor(n / ni) % nj;
    const k = Math.floor(n / (ni * nj));
    if (!box) box = [[i, i + 1], [j, j + 1], [k, k + 1]];
    else {
      box[0] = [Math.min(box[0][0], i), Math.max(box[0][1], i + 1)];
      box[1] = [Math.min(box[1][0], j), Math.max(box[1][1], j + 1)];
      box[2][1] = k + 1;
    }
  }
  return box;
}

// A uint8 label header from the study's NIfTI header bytes (the grid and its affine kept).
export function labelHeader(volumeHeader) {
  const header = new Uint8Array(volumeHeader);
  const view = new DataView(header.buffer);
  view.setInt16(70, DT_UINT8, true);
  view.setInt16(72, 8, true); // bitpix
  view.setFloat32(112, 1.0, true);
  view.setFloat32(116, 0.0, true);
  return header;
}

// The prompts of each structure (label) on one study, as the app's request fields.
// Voxel indices [i, j, k] of the image array as the app reads it; k is the slice.
//
// Edits, in the order made: {kind: 'point', positive, voxel}, {kind: 'box', roi},
// {kind: 'points', positive, voxels, drawn}: points from one gesture in a plane across the slices,
// {kind: 'stroke', positive, points: [[i, j, k], ...]}, {kind: 'lasso', slice, polygon: [[i, j], ...]},
// {kind: 'start', from, name, slices}: a saved mask to start from (the app's mask_prompt),
// {kind: 'slice_mask', slice, field}: a slice painted in re-propagate mode (the app's slice_masks entry),
// {kind: 'paint', slice, add, voxels}: a manual brush or eraser edit (never sent: brush.js).

export class LabelPrompts {
  constructor() {
    this.edits = [];
    this.undone = []; // edits taken back, newest last: redo puts them back
    this.resetNext = false; // the next request starts this label afresh (after Clear)
    this.done = 0; // edits the mask on screen was made from (a stopped request drops the ones after)
  }

  // the edits since the mask on screen are dropped (its request was stopped)
  dropUnfinished() {
    this.edits = this.edits.slice(0, this.done);
  }

  add(edit) {
    this.edits.push(edit);
    this.undone = [];
  }

  addPoint(voxel, positive) {
    this.add({ kind: 'point', positive, voxel: voxel.map((v) => Math.round(v)) });
  }

  // the points one gesture made (drawn: 'stroke', 'box' or 'lasso'): one edit, so one undo
  addPoints(voxels, positive, drawn) {
    this.add({ kind: 'points', positive, drawn, voxels: voxels.map((v) => v.map((x) => Math.round(x))) });
  }

  // One box per structure: a new box replaces the earlier one.
  setBox(a, b) {
    const k = Math.round(a[2]);
    const roi = [
      Math.min(a[0], b[0]), Math.max(a[0], b[0]),
      Math.min(a[1], b[1]), Math.max(a[1], b[1]),
      k, k,
    ].map((v) => Math.round(v));
    this.edits = this.edits.filter((e) => e.kind !== 'box');
    this.add({ kind: 'box', roi });
  }

  // a free-hand line on slice k: points [[i, j], ...] (voxel indices, fractions allowed)
  addStroke(points, k, positive) {
    this.add({ kind: 'stroke', positive, points: points.map(([i, j]) => [round1(i), round1(j), k]) });
  }

  // a closed outline on slice k: its inside is that slice's mask
  addLasso(polygon, k) {
    this.add({ kind: 'lasso', slice: k, polygon: polygon.map(([i, j]) => [round1(i), round1(j)]) });
  }

  // start from a saved mask (from: 'final' the saved label, 'structure' another structure,
  // 'upload' a label file, kept here and sent with each request) on slices
  startFrom(from, name, slices, file = null) {
    this.edits = this.edits.filter((e) => e.kind !== 'start');
    this.add({ kind: 'start', from, name, slices, file });
  }

  // the label file the structure starts from (null: none)
  startFile() {
    return this.edits.find((e) => e.kind === 'start')?.file || null;
  }

  undo() {
    const edit = this.edits.pop();
    if (edit) this.undone.push(edit);
  }

  redo() {
    const edit = this.undone.pop();
    if (edit) this.edits.push(edit);
  }

  canRedo() {
    return this.undone.length > 0;
  }

  clear() {
    this.edits = [];
    this.undone = [];
    this.done = 0;
    this.resetNext = true;
  }

  isEmpty() {
    return this.edits.length === 0;
  }

  // Something the model can start from: a positive point or stroke, a box, a lasso, a painted slice, a saved mask.
  canSegment() {
    return this.edits.some((e) => ['box', 'lasso', 'start', 'slice_mask'].includes(e.kind) || e.positive);
  }

  points(positive) {
    return this.edits.filter((e) => e.positive === positive)
      .flatMap((e) => (e.kind === 'point' ? [e.voxel] : e.kind === 'points' ? e.voxels : []));
  }

  box() {
    const box = this.edits.find((e) => e.kind === 'box');
    return box ? box.roi : null;
  }

  // Every prompt of the label each time, as the Slicer module sends them: the app works out
  // what changed (an added point corrects from its slice; a removed one restarts that slice).
  // locked: the structures whose voxels this one must not take.
  request(label, clientId, locked = []) {
    const params = {
      label,
      foreground: this.points(true),
      background: this.points(false),
      client_id: clientId,
      reset_state: this.resetNext,
    };
    const roi = this.box();
    if (roi) params.roi = roi;
    const strokes = this.edits.filter((e) => e.kind === 'stroke');
    if (strokes.length) params.strokes = strokes.map(({ points, positive }) => ({ points, positive }));
    const lassos = this.edits.filter((e) => e.kind === 'lasso');
    if (lassos.length) params.lasso = lassos.map(({ slice, polygon }) => ({ slice, polygon }));
    const painted = new Map(); // the latest painting of each slice: it was made over the earlier ones
    for (const e of this.edits) if (e.kind === 'slice_mask') painted.set(e.slice, e.field);
    if (painted.size) params.slice_masks = [...painted.values()];
    const start = this.edits.find((e) => e.kind === 'start');
    if (start?.from === 'upload') params.mask_prompt = { from: 'upload', slices: start.slices };
    else if (start) params.mask_prompt = { from: start.from, name: start.name, slices: start.slices };
    if (locked.length) params.locked = locked;
    return params;
  }
}

function round1(v) {
  return Math.round(v * 10) / 10;
}

// The prompts of each structure (label) on one study, as the app's request fields.
// Voxel indices [i, j, k] of the image array as the app reads it; k is the slice.

export class LabelPrompts {
  constructor() {
    this.edits = []; // in the order made: {kind: 'point', positive, voxel} or {kind: 'box', roi}
    this.resetNext = false; // the next request starts this label afresh (after Clear)
    this.done = 0; // edits the mask on screen was made from (a stopped request drops the ones after)
  }

  // the edits since the mask on screen are dropped (its request was stopped)
  dropUnfinished() {
    this.edits = this.edits.slice(0, this.done);
  }

  addPoint(voxel, positive) {
    this.edits.push({ kind: 'point', positive, voxel: voxel.map((v) => Math.round(v)) });
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
    this.edits.push({ kind: 'box', roi });
  }

  undo() {
    this.edits.pop();
  }

  clear() {
    this.edits = [];
    this.done = 0;
    this.resetNext = true;
  }

  isEmpty() {
    return this.edits.length === 0;
  }

  // Something the model can start from: a positive point or a box.
  canSegment() {
    return this.edits.some((e) => e.kind === 'box' || e.positive);
  }

  points(positive) {
    return this.edits.filter((e) => e.kind === 'point' && e.positive === positive).map((e) => e.voxel);
  }

  box() {
    const box = this.edits.find((e) => e.kind === 'box');
    return box ? box.roi : null;
  }

  // Every prompt of the label each time, as the Slicer module sends them: the app works out
  // what changed (an added point corrects from its slice; a removed one restarts that slice).
  request(label, clientId) {
    const params = {
      label,
      foreground: this.points(true),
      background: this.points(false),
      client_id: clientId,
      reset_state: this.resetNext,
    };
    const roi = this.box();
    if (roi) params.roi = roi;
    return params;
  }
}

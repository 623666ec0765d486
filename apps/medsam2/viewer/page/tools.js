// The marks layer over the image: each prompt drawn where it was given, and each tool's gesture
// turned into an edit of the structure's prompts, on the voxel under the pointer (view.js maps
// the pointer by the function that draws the voxels).
//
// Points, a box, a scribble (stroke) or a lasso go on the app's slices (the k plane). In the other
// two planes a point lands on the slice k of its voxel, and a scribble on the slices k of the
// voxels it crosses (up to 6 of them, as points). A box or an outline there says only one of a
// slice's two extents, so it becomes what it does say: three foreground points on the app's slice
// through its middle, a quarter, a half and three quarters along the part of that slice's row
// inside it (acrossSlices). The brush and eraser (brush.js) paint on the app's slices only.

import { brushedVoxels } from './brush.js';

export const DRAG_PIXELS = 4;
const PATH_TOOLS = ['stroke', 'lasso', 'brush', 'eraser'];
const STROKE_POINTS_ACROSS = 6;

export class PromptCanvas {
  // current(): {label, prompts, locked} of the structure being prompted, or null (no study open)
  // onEdit(clickedAt): an edit was added; say(text, kind): a message in the status line;
  // onPaint(stroke, clickedAt): the brush or eraser drew {slice, add, voxels}; radius(): the brush's (CSS px)
  constructor(marks, view, { current, onEdit, say, onPaint, radius }) {
    Object.assign(this, { marks, view, current, onEdit, say, onPaint, radius });
    this.start = null;
    this.now = null;
    this.path = []; // a stroke or lasso being drawn: canvas points
    marks.addEventListener('contextmenu', (event) => event.preventDefault());
    marks.addEventListener('pointerdown', (event) => this.down(event));
    marks.addEventListener('pointermove', (event) => this.move(event));
    marks.addEventListener('pointerup', (event) => this.up(event));
  }

  tool() {
    return document.querySelector('input[name="tool"]:checked').value;
  }

  xy(event) {
    const rect = this.marks.getBoundingClientRect();
    return [event.clientX - rect.left, event.clientY - rect.top];
  }

  down(event) {
    const target = this.current();
    if (!target || event.ctrlKey || event.metaKey) return; // Ctrl: navigation (other_planes.js)
    if (target.locked) { this.say(`${target.label} is locked: unlock it to change it.`, 'error'); return; }
    this.start = this.xy(event);
    this.now = null;
    this.path = PATH_TOOLS.includes(this.tool()) ? [this.start] : [];
    this.marks.setPointerCapture(event.pointerId);
  }

  move(event) {
    if (!this.start) return;
    this.now = this.xy(event);
    if (this.path.length) {
      const last = this.path[this.path.length - 1];
      if (Math.hypot(this.now[0] - last[0], this.now[1] - last[1]) >= 2) this.path.push(this.now);
    } else if (this.tool() !== 'box') return;
    this.draw();
  }

  up(event) {
    if (!this.start) return;
    const { start } = this;
    const end = this.xy(event);
    const path = [...this.path, end];
    this.start = this.now = null;
    this.path = [];
    const clickedAt = performance.now();
    const target = this.current();
    if (!target) return;
    if (['brush', 'eraser'].includes(this.tool())) { this.paint(path, clickedAt); return; }
    const added = this.edit(target.prompts, start, end, path, !(event.button === 2 || event.shiftKey), event.button);
    if (added) this.onEdit(clickedAt); else this.draw();
  }

  paint(path, clickedAt) {
    const { view } = this;
    this.draw();
    if (view.normal !== 2) {
      this.say(`The brush paints on the app's slices: switch to the ${view.planeName(2)} view.`, 'error');
      return;
    }
    const stroke = brushedVoxels(view, path, this.radius(), this.tool() === 'brush');
    if (!stroke.voxels.length) { this.say('Paint on the image.', 'error'); return; }
    this.onPaint(stroke, clickedAt);
  }

  // the gesture as an edit of prompts; false (and a message where it helps) when it is none
  edit(prompts, start, end, path, positive, button) {
    const { view } = this;
    const tool = this.tool();
    const moved = Math.hypot(end[0] - start[0], end[1] - start[1]) > DRAG_PIXELS;
    const onSlices = view.normal === 2;
    if (!onSlices && (tool === 'box' || tool === 'lasso')) {
      if (tool === 'box' && (!moved || button !== 0)) return false;
      const outline = tool === 'box' ? [start, [end[0], start[1]], end, [start[0], end[1]]] : path;
      const voxels = acrossSlices(view, outline);
      if (!voxels) { this.say(`Draw the ${tool === 'box' ? 'box' : 'outline'} around the structure, on the image.`, 'error'); return false; }
      prompts.addPoints(voxels, true, tool);
      return true;
    }
    if (tool === 'stroke' && !onSlices) { // each voxel it crosses is a point on its own slice
      const seen = new Set();
      const voxels = path.map(([x, y]) => view.voxelAt(x, y)).filter((v) => v && !seen.has(v.join()) && seen.add(v.join()));
      if (!voxels.length) { this.say('Draw on the image.', 'error'); return false; }
      const step = Math.max(1, Math.ceil(voxels.length / STROKE_POINTS_ACROSS));
      prompts.addPoints(voxels.filter((_, n) => n % step === 0), positive, 'stroke');
      return true;
    }
    if (tool === 'stroke' || tool === 'lasso') {
      const points = path.map(([x, y]) => view.pointAt(x, y));
      if (points.some((v) => !v)) { this.say('Draw on the image.', 'error'); return false; }
      const k = view.currentSlice();
      if (tool === 'stroke') { prompts.addStroke(points, k, positive); return true; }
      const spread = Math.max(...path.map(([x, y]) => Math.hypot(x - start[0], y - start[1])));
      if (points.length < 3 || spread <= DRAG_PIXELS) {
        this.say('Draw a closed outline around the structure.', 'error');
        return false;
      }
      prompts.addLasso(points, k);
      return true;
    }
    if (tool === 'box' && moved && button === 0) {
      const a = view.voxelAt(...start);
      const b = view.voxelAt(...end);
      if (!a || !b) { this.say('Draw the box on the image.', 'error'); return false; }
      prompts.setBox(a, b);
      return true;
    }
    if (moved) return false;
    const voxel = view.voxelAt(...end);
    if (!voxel) return false;
    prompts.addPoint(voxel, positive);
    return true;
  }

  // the structure's prompts on the shown plane, and the gesture being drawn
  draw() {
    const { marks, view } = this;
    const dpr = window.devicePixelRatio || 1;
    const { clientWidth: w, clientHeight: h } = marks;
    if (marks.width !== w * dpr || marks.height !== h * dpr) { marks.width = w * dpr; marks.height = h * dpr; }
    const ctx = marks.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const target = this.current();
    if (!target) return;
    const k = view.currentSlice();
    const normal = view.normal;
    for (const edit of target.prompts.edits) {
      if (edit.kind === 'point' || edit.kind === 'points') {
        const voxels = edit.kind === 'point' ? [edit.voxel] : edit.voxels;
        for (const voxel of voxels) if (voxel[normal] === k) drawPoint(ctx, view.canvasOf(voxel), edit.positive);
      } else if (normal !== 2) continue; // drawn on the app's slices: shown there
      else if (edit.kind === 'box' && edit.roi[4] === k) {
        const a = view.canvasOf([edit.roi[0], edit.roi[2], k]);
        const b = view.canvasOf([edit.roi[1], edit.roi[3], k]);
        if (a && b) strokeBox(ctx, a, b, '#4fc3ff');
      } else if (edit.kind === 'stroke' && edit.points[0][2] === k) {
        strokePath(ctx, edit.points.map((p) => view.canvasOf(p)), edit.positive ? '#30e060' : '#ff4040', false);
      } else if (edit.kind === 'lasso' && edit.slice === k) {
        // yellow, not orange: the overlay's red stays the only red on screen
        strokePath(ctx, edit.polygon.map(([i, j]) => view.canvasOf([i, j, k])), '#e8e84a', true);
      }
    }
    if (this.start && this.now && this.tool() === 'box') strokeBox(ctx, this.start, this.now, '#ffffff');
    const tool = this.tool();
    if (this.path.length && ['brush', 'eraser'].includes(tool)) {
      strokePath(ctx, this.path, tool === 'brush' ? 'rgba(255,255,255,0.5)' : 'rgba(80,160,255,0.5)', false,
        2 * this.radius());
    } else if (this.path.length) strokePath(ctx, this.path, '#ffffff', tool === 'lasso');
  }
}

// A box or outline drawn in a plane across the app's slices: three voxels on the app's slice
// through its middle, spread along the longest run of that slice's row inside it; null if none.
export function acrossSlices(view, outline) {
  const corners = outline.map(([x, y]) => view.voxelAt(x, y)).filter(Boolean);
  if (outline.length < 3 || corners.length < 2) return null;
  const ks = corners.map((v) => v[2]);
  const along = view.normal === 0 ? 1 : 0; // the in-plane axis that is not k
  const voxel = [...corners[0]];
  voxel[2] = Math.round((Math.min(...ks) + Math.max(...ks)) / 2);
  let best = null;
  let run = null;
  for (let n = 0; n <= view.dims[along]; n += 1) {
    voxel[along] = n;
    const p = n < view.dims[along] ? view.canvasOf(voxel) : null;
    if (p && insidePolygon(p, outline)) run = run ? [run[0], n] : [n, n];
    else if (run) { if (!best || run[1] - run[0] > best[1] - best[0]) best = run; run = null; }
  }
  if (!best) return null;
  return [0.25, 0.5, 0.75].map((f) => {
    const v = [...voxel];
    v[along] = Math.round(best[0] + f * (best[1] - best[0]));
    return v;
  });
}

function insidePolygon([x, y], polygon) {
  let inside = false;
  for (let a = 0, b = polygon.length - 1; a < polygon.length; b = a++) {
    const [xa, ya] = polygon[a];
    const [xb, yb] = polygon[b];
    if ((ya > y) !== (yb > y) && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) inside = !inside;
  }
  return inside;
}

function drawPoint(ctx, p, positive) {
  if (!p) return;
  ctx.beginPath();
  ctx.arc(p[0], p[1], 5, 0, 2 * Math.PI);
  ctx.fillStyle = positive ? '#30e060' : '#ff4040';
  ctx.fill();
  ctx.strokeStyle = '#000';
  ctx.stroke();
}

function strokePath(ctx, points, colour, closed, width = 3) {
  if (!points.length || points.some((p) => !p)) return;
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  ctx.lineJoin = 'round';
  ctx.lineCap = 'round';
  ctx.beginPath();
  points.forEach(([x, y], n) => (n ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  if (closed) ctx.closePath();
  ctx.stroke();
}

function strokeBox(ctx, a, b, colour) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2;
  ctx.strokeRect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1]));
}

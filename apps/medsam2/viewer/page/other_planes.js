// The three-view layout: beside the main view (the one that takes prompts), the two other
// planes through the cursor, with the structures over them. A click there moves the cursor to
// the voxel under the pointer, so the main view's plane goes through it (as a crosshair click
// in Slicer); a double click brings that plane into the main view.

import { VolumeView } from './view.js';

export class OtherPlanes {
  // canvases: the two; onPick(voxel, normal, bring): a click (bring false) or double click (true)
  constructor(canvases, onPick) {
    this.views = canvases.map((canvas) => new VolumeView(canvas));
    this.on = false;
    this.views.forEach((view) => {
      const pick = (event, bring) => {
        const rect = view.canvas.getBoundingClientRect();
        const voxel = view.voxelAt(event.clientX - rect.left, event.clientY - rect.top);
        if (voxel) onPick(voxel, view.normal, bring);
      };
      view.canvas.addEventListener('click', (event) => pick(event, false));
      view.canvas.addEventListener('dblclick', (event) => pick(event, true));
    });
  }

  // the planes other than main's through its cursor (nothing while the layout has one view)
  follow(main) {
    if (!this.on || !main.image) return;
    const normals = [0, 1, 2].filter((n) => n !== main.normal);
    this.views.forEach((view, n) => view.mirror(main, normals[n]));
  }

  // the structures (a LabelVolume) changed inside box: a plane it crosses is drawn again
  changed(box, labels) {
    if (!this.on) return;
    for (const view of this.views) {
      if (!view.image) continue;
      view.labels = labels;
      view.changed(box);
    }
  }

  names() {
    return this.views.map((view) => view.planeName(view.normal));
  }
}

// The three-view layout: beside the main view, the two other planes through the cursor, with
// the structures and their prompts over them. Each takes prompts as the main view does (a
// PromptCanvas on its overlay). Ctrl+click moves the cursor to the voxel under the pointer, so
// the main view's plane goes through it (Slicer's crosshair); Ctrl+double click brings that plane
// into the main view.

import { VolumeView } from './view.js';

export class OtherPlanes {
  // canvases: the two images; overlays: the canvas over each, which takes the pointer;
  // onPick(voxel, normal, bring): a Ctrl+click (bring false) or Ctrl+double click (true);
  // promptsOn(overlay, view): the PromptCanvas (tools.js) that draws and takes prompts there
  constructor(canvases, overlays, onPick, promptsOn) {
    this.views = canvases.map((canvas) => new VolumeView(canvas));
    this.prompts = this.views.map((view, n) => promptsOn(overlays[n], view));
    this.on = false;
    this.views.forEach((view, n) => {
      const pick = (event, bring) => {
        if (!(event.ctrlKey || event.metaKey)) return; // a prompt: the PromptCanvas has it
        const rect = overlays[n].getBoundingClientRect();
        const voxel = view.voxelAt(event.clientX - rect.left, event.clientY - rect.top);
        if (voxel) onPick(voxel, view.normal, bring);
      };
      overlays[n].addEventListener('click', (event) => pick(event, false));
      overlays[n].addEventListener('dblclick', (event) => pick(event, true));
    });
  }

  // the prompts over each plane, drawn again
  draw() {
    if (this.on) this.prompts.forEach((prompts) => prompts.draw());
  }

  // the planes other than main's through its cursor (nothing while the layout has one view)
  follow(main) {
    if (!this.on || !main.image) return;
    const normals = [0, 1, 2].filter((n) => n !== main.normal);
    this.views.forEach((view, n) => view.mirror(main, normals[n]));
    this.draw();
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

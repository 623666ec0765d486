// What every part of the page shares: the page's state, the image view, the status line, and
// the calls a part makes into main.js (`hooks`, set there, so no module imports main.js).

import { AuthRequired } from './api.js';
import { askLogIn } from './login.js';
import { LabelPrompts } from './prompts.js';
import { VolumeView } from './view.js';

export const $ = (id) => document.getElementById(id);
export const clientId = sessionStorage.getItem('medsam2-client') || `viewer-${crypto.randomUUID()}`;
sessionStorage.setItem('medsam2-client', clientId); // one session per browser tab

export const state = {
  labels: [],
  studies: [],
  image: null,
  label: null,
  prompts: new Map(), // label -> LabelPrompts
  shown: null, // LabelVolume: the structures on screen
  masks: new Map(), // label value (1-based) -> Mask (the LabelVolume's)
  results: new Map(), // label -> last result JSON
  saved: new Map(), // label -> its mask in the study's saved final label (a copy, never changed)
  savedShown: new Set(), // labels whose mask on screen is the saved one
  run: null, // the segmentation streaming in: {controller, label, ...}
  timings: [], // per request: mouse-up to the prompted slice's mask, and to the final mask, on screen (ms)
  opening: null, // the last open: ms from the pick to the first slice, and to the whole study, on screen
  locked: new Set(), // labels whose voxels no other structure takes (the app's `locked`)
};
export const view = new VolumeView($('image'));
export const marks = $('marks');

export function setStatus(text, kind = 'idle') {
  $('status').textContent = text;
  $('status').dataset.state = kind;
}

export function showError(error) {
  setStatus(error.message, 'error');
  if (error instanceof AuthRequired) askLogIn();
}

export function studyName(image) {
  return state.studies.find((s) => s.image === image)?.description || image;
}

export function labelValue(label) {
  return state.labels.indexOf(label) + 1;
}

export function promptsOf(label) {
  if (!state.prompts.has(label)) state.prompts.set(label, new LabelPrompts());
  return state.prompts.get(label);
}

// requestMask(clickedAt), refreshPanels(), openStudy(image), goToSlice(k), restoreSaved(label), studiesChanged():
// set by main.js
export const hooks = {};

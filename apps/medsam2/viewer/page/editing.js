// Editing a structure beyond prompting it: undo and redo, the brush's manual edits and painted
// slices (brush.js), and the masks a structure can start from (its saved label, a label file,
// another structure as shown).

import { paintManual, redrawManual, sliceAfter, sliceMaskField } from './brush.js';
import { $, hooks, labelValue, promptsOf, setStatus, state, view } from './page.js';

function undoRedo(redo) {
  const prompts = promptsOf(state.label);
  const edit = redo ? prompts.undone.at(-1) : prompts.edits.at(-1);
  if (redo) prompts.redo(); else prompts.undo();
  hooks.refreshPanels();
  if (edit?.kind !== 'paint') { hooks.requestMask(performance.now()); return; }
  prompts.done = prompts.edits.length; // a manual edit asks the model nothing
  redrawManual(state.shown, labelValue(state.label), prompts.edits);
  view.paint(state.shown);
  hooks.refreshPanels();
}

// The structure as the model (or the saved label) left it is what its manual edits are drawn over.
export function keepUnderManualEdits(label) {
  const value = labelValue(label);
  state.shown.keepBase(value);
  const edits = promptsOf(label).edits;
  if (edits.some((e) => e.kind === 'paint')) redrawManual(state.shown, value, edits);
}

// The brush or eraser drew on the shown slice (brush.js). Manual: exactly those voxels change,
// and stay so over the structure's later results. Re-propagate: the slice as it is after the
// edit becomes that slice's mask prompt, and the structure is segmented again from it.
export async function paintStroke(stroke, clickedAt) {
  const label = state.label;
  const value = labelValue(label);
  const prompts = promptsOf(label);
  const done = stroke.add ? 'painted' : 'erased';
  if ($('brush-mode').value === 'manual') {
    if (!state.shown.hasBase(value)) state.shown.keepBase(value);
    prompts.add({ kind: 'paint', ...stroke });
    prompts.done = prompts.edits.length;
    paintManual(state.shown, value, stroke);
    view.paint(state.shown);
    hooks.refreshPanels();
    setStatus(`${label}: ${stroke.voxels.length} voxels ${done} by hand on slice ${stroke.slice}; nothing else changed.`);
    return;
  }
  const region = sliceAfter(state.shown, value, stroke);
  if (!region) {
    setStatus(`Nothing of ${label} would be left on slice ${stroke.slice}: to take it off this slice, add an `
      + 'outside point there, or erase in manual mode.', 'error');
    return;
  }
  prompts.add({ kind: 'slice_mask', slice: stroke.slice, field: await sliceMaskField(region) });
  hooks.refreshPanels();
  hooks.requestMask(clickedAt);
}

$('undo').addEventListener('click', () => undoRedo(false));
$('redo').addEventListener('click', () => undoRedo(true));
// as in Slicer's Segment Editor: Ctrl+Z undoes, Ctrl+Y or Ctrl+Shift+Z redoes
window.addEventListener('keydown', (event) => {
  if (!(event.ctrlKey || event.metaKey) || !state.image || state.locked.has(state.label)) return;
  const key = event.key.toLowerCase();
  if (key === 'z' && !event.shiftKey && !$('undo').disabled) { event.preventDefault(); undoRedo(false); }
  if ((key === 'y' || (key === 'z' && event.shiftKey)) && !$('redo').disabled) { event.preventDefault(); undoRedo(true); }
});
// the structure's saved mask on the shown slice becomes its starting mask (refined with SAM 2)
$('start-saved').addEventListener('click', () => {
  const k = view.currentSlice();
  const saved = state.saved.get(state.label);
  const [ni, nj] = saved.dims;
  let any = false;
  for (let n = ni * nj * k; n < ni * nj * (k + 1) && !any; n += 1) any = saved.voxels[n] > 0;
  if (!any) { setStatus(`${state.label}: its saved mask has nothing on slice ${k}; go to a slice it covers.`, 'error'); return; }
  promptsOf(state.label).startFrom('final', state.label, [k]);
  hooks.refreshPanels();
  hooks.requestMask(performance.now());
});
// a label file's mask on the shown slice becomes the structure's starting mask (the file goes
// with each of the structure's requests while that start is among its prompts)
$('start-file').addEventListener('change', () => {
  const file = $('start-file').files[0];
  $('start-file').value = '';
  if (!file || !state.image || !state.label || state.locked.has(state.label)) return;
  promptsOf(state.label).startFrom('upload', file.name, [view.currentSlice()], file);
  hooks.refreshPanels();
  hooks.requestMask(performance.now());
});
// another structure's mask on the shown slice, as the page shows it, is this one's starting mask
// (sent as that slice's mask prompt: what is on screen, manual edits included)
$('start-structure').addEventListener('change', async () => {
  const from = $('start-structure').value;
  $('start-structure').value = '';
  if (!from || !state.label || state.locked.has(state.label)) return;
  const k = view.currentSlice();
  const region = sliceAfter(state.shown, labelValue(from), { slice: k, add: true, voxels: [] });
  if (!region) { setStatus(`${from} has nothing on slice ${k}: go to a slice it covers.`, 'error'); return; }
  promptsOf(state.label).add({ kind: 'slice_mask', slice: k, field: await sliceMaskField(region), from });
  hooks.refreshPanels();
  hooks.requestMask(performance.now());
});

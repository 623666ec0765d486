// "Save as final label": every structure whole, checked against what the app says it stored, and
// refused (409) when someone saved the study since it was opened; then "Save anyway" replaces it.

import { SaveConflict, finalVersion, saveFinal } from './api.js';
import { Mask } from './labelmap.js';

const $ = (id) => document.getElementById(id);

// Saves the page's structures; returns the app's answer. Throws SaveConflict (with the words for
// the clinician) when the label changed since it was opened, and Error when the app stored
// something other than the page shows.
// extra: more params of the save (one_prompt_run: it accepts that one-prompt result)
export async function saveStructures(state, studyName, extra = {}) {
  const structures = [...state.masks].filter(([, m]) => m.count() > 0).sort((a, b) => a[0] - b[0])
    .map(([value, mask]) => ({ name: state.labels[value - 1], idx: value, mask }));
  let answer;
  try {
    answer = await saveFinal(state.image, structures, state.version, extra);
  } catch (error) {
    if (!(error instanceof SaveConflict)) throw error;
    // a second click replaces theirs (which stays in the label history)
    state.version = await finalVersion(state.image).catch(() => state.version);
    $('save').textContent = 'Save anyway (replaces the label saved since)';
    throw new SaveConflict('Not saved: another save of this study\'s final label came in after you opened it. '
      + 'Open the study again to see it, or save anyway to replace it (it stays in the label history).');
  }
  state.version = answer.saved?.version ?? null;
  $('save').textContent = 'Save as final label';
  const stored = new Map((answer.saved?.structures || []).map((s) => [s.name, s]));
  // what the app stored, structure by structure, against what the page shows
  const differ = structures.filter((s) => stored.get(s.name)?.voxels !== s.mask.count());
  if (differ.length || stored.size !== structures.length) {
    throw new Error(`the app stored something else than this page shows (${differ.map((s) => s.name).join(', ')
      || 'another set of structures'}): check the final label before relying on it`);
  }
  const what = structures.map((s) => `${s.name} (${s.mask.count()} voxels)`).join(', ');
  const shared = (answer.saved?.overlaps || []).map((o) => `${o.structures.join(' and ')} overlap on ${o.voxels} `
    + `voxels, each kept whole (the label map shows ${o.label_map_keeps} there)`).join('; ');
  $('save-status').textContent = `Saved ${what} as the final label of ${studyName}`
    + `${shared ? `. ${shared}` : ''}${answer.warning ? ` - ${answer.warning}` : ''}.`;
  for (const s of structures) { // a copy: the shown masks change with the next result
    state.saved.set(s.name, new Mask(s.mask.header, s.mask.voxels.slice(), s.mask.dims));
    state.savedShown.add(s.name);
  }
  for (const label of [...state.saved.keys()]) {
    if (!structures.some((s) => s.name === label)) { state.saved.delete(label); state.savedShown.delete(label); }
  }
  return answer;
}

// The study and structure lists of the side panel.

import { $, hooks, state, labelValue } from './page.js';
import { LABEL_COLOURS } from './view.js';

export function renderStudies() {
  // Items are updated in place, not rebuilt: the list is refreshed whenever a label is saved (here
  // or in another tab), and a press on an item that is replaced before the release is no click.
  const list = $('studies');
  const items = new Map([...list.children].map((item) => [item.dataset.image, item]));
  state.studies.forEach((study, n) => {
    let item = items.get(study.image);
    if (!item) {
      item = document.createElement('li');
      item.dataset.image = study.image;
      item.append(document.createTextNode(''), Object.assign(document.createElement('span'), { className: 'tag', textContent: 'final ✓' }));
      item.addEventListener('click', () => hooks.openStudy(study.image));
    }
    item.firstChild.data = study.description || study.image;
    item.title = study.image;
    item.lastChild.hidden = !study.final;
    item.classList.toggle('selected', study.image === state.image);
    if (list.children[n] !== item) list.insertBefore(item, list.children[n] || null);
  });
  while (list.children.length > state.studies.length) list.lastElementChild.remove();
}

export function renderLabels() {
  const list = $('labels');
  list.replaceChildren();
  state.labels.forEach((label, n) => {
    const item = document.createElement('li');
    item.dataset.label = label;
    const swatch = Object.assign(document.createElement('span'), { className: 'swatch' });
    swatch.style.background = LABEL_COLOURS[n % LABEL_COLOURS.length];
    const mask = state.masks.get(n + 1);
    const count = mask?.count();
    item.append(swatch, label);
    const saved = mask && state.savedShown.has(label) ? ' saved' : '';
    if (count) item.append(Object.assign(document.createElement('span'), { className: 'tag', textContent: `${count} vx${saved}` }));
    const lock = Object.assign(document.createElement('button'), {
      type: 'button', className: 'lock', textContent: state.locked.has(label) ? 'locked' : 'lock',
      title: 'Locked: other structures never take its voxels, and it is not segmented again' });
    lock.setAttribute('aria-pressed', String(state.locked.has(label)));
    lock.disabled = !count;
    lock.addEventListener('click', (event) => {
      event.stopPropagation();
      if (state.locked.has(label)) state.locked.delete(label); else state.locked.add(label);
      hooks.refreshPanels();
    });
    item.append(lock);
    if (state.locked.has(label)) item.classList.add('locked');
    if (label === state.label) item.classList.add('selected');
    item.addEventListener('click', () => { state.label = label; hooks.refreshPanels(); });
    list.append(item);
  });
}

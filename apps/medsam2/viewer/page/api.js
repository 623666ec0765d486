// Calls to the app: MONAI Label's own endpoints, and the viewer's two routes.

import { gunzip, gzip, masksFromStack, stackNiftiBytes } from './labelmap.js';

export const MODEL = 'medsam2_3d';
const TOKEN_KEY = 'medsam2-token'; // this tab's bearer token when MONAI Label's auth is on

export class AuthRequired extends Error {}

function withAuth(options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` } } : options;
}

// What went wrong, in a clinician's words: the server's own explanation where it gives one
// (it names the field and what to do), never a status code or a route.
const PLAIN = {
  403: 'your account may not do this (ask an administrator for the role)',
  404: 'it is no longer there (reload the list)',
  413: 'the file is larger than this server accepts',
  429: 'the server is busy; try again in a moment',
  500: 'the server ran into an error (it is in the server log); try again, or tell your administrator',
  502: 'the server did not answer (it may be restarting); try again in a moment',
  503: 'the server is starting or busy; try again in a moment',
  504: 'the server took too long to answer; try again in a moment',
};

export function plainDetail(status, detail) {
  // a status code said as one ("HTTP 404", or "404: " leading the text) goes; a number in the words
  // (a grid of 128 x 96 voxels, a 512 MB limit) stays
  const text = (detail || '').replace(/^(HTTP ?)?[1-5]\d\d\b:? ?/, '').replace(/\bHTTP ?[1-5]\d\d\b:? ?/g, '')
    .replace(/\b(GET|PUT|POST|DELETE) \/\S*/g, '').trim();
  if (status >= 500 || !text) return PLAIN[status] || 'the server could not do it; try again in a moment';
  return text;
}

async function failure(response, what) {
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    return new AuthRequired(`${what}: log in first`);
  }
  let detail = '';
  try {
    const body = await response.json();
    detail = typeof body.detail === 'string' ? body.detail : (body.detail?.msg ?? '');
  } catch {
    detail = '';
  }
  const error = new Error(`${what}: ${plainDetail(response.status, detail)}`);
  error.status = response.status;
  return error;
}

// Whether the server wants a log-in that this tab has not done yet.
export async function needsLogIn() {
  const response = await fetch('auth'); // the viewer's own route: answered with auth on or off
  if (!response.ok) return false;
  return Boolean((await response.json()).enabled) && !sessionStorage.getItem(TOKEN_KEY);
}

// MONAI Label's own log-in (POST /auth/token, password grant against its realm).
export async function logIn(username, password) {
  const response = await fetch('/auth/token', { method: 'POST', body: new URLSearchParams({ username, password }) });
  if (!response.ok) throw await failure(response, 'logging in');
  const body = await response.json();
  if (!body.access_token) throw new Error('logging in: the server sent no token');
  sessionStorage.setItem(TOKEN_KEY, body.access_token);
}

export async function appInfo() {
  const response = await fetch('/info/', withAuth());
  if (!response.ok) throw await failure(response, 'reading /info');
  const info = await response.json();
  const model = info.models?.[MODEL];
  if (!model) throw new Error(`this server has no ${MODEL} model`);
  const labels = Array.isArray(model.labels) ? model.labels : Object.keys(model.labels || {});
  return { info, labels: labels.length ? labels : info.labels || [] };
}

export async function listStudies() {
  const response = await fetch('studies', withAuth());
  if (!response.ok) throw await failure(response, 'listing studies');
  return (await response.json()).studies;
}

// A study to show: {buffer (an uncompressed .nii: the browser inflates what travels gzipped),
// dims (the whole study's voxels), window ([low, high] the model's default uses, or null), slice
// (part 'slice': which one)}; null when the server has no quick slice for the study's format.
// clientId: the tab's session, so the server encodes the study's slices for its first click.
export async function fetchVolume(image, clientId, part = 'all') {
  const query = `image=${encodeURIComponent(image)}&client_id=${encodeURIComponent(clientId)}&part=${part}`;
  const response = await fetch(`volume?${query}`, withAuth());
  if (!response.ok) throw await failure(response, `opening ${image}`);
  if (response.status === 204) return null;
  const numbers = (name) => (response.headers.get(name) || '').split(',').filter(Boolean).map(Number);
  const window = numbers('X-Model-Window');
  return {
    buffer: await response.arrayBuffer(),
    dims: numbers('X-Volume-Dims'),
    window: window.length === 2 ? window : null,
    slice: response.headers.has('X-Slice') ? Number(response.headers.get('X-Slice')) : null,
    frameTimeMs: response.headers.has('X-Frame-Time-Ms') ? Number(response.headers.get('X-Frame-Time-Ms')) : null,
    video: response.headers.has('X-Video-Frames'), // its third axis is time (frameTimeMs null: not known)
  };
}

// The slice shown, so the server encodes outward from it; a failure only loses that ordering
export async function sendFocus(image, clientId, k) {
  const query = `image=${encodeURIComponent(image)}&client_id=${encodeURIComponent(clientId)}&slice=${k}`;
  const response = await fetch(`focus?${query}`, withAuth({ method: 'POST' }));
  if (!response.ok) console.warn('focus not sent:', response.status);
}

// One segmentation with MONAI Label's request fields (as POST /infer/medsam2_3d), streamed
// (POST segment: server-sent events). onEvent(name, data) for each 'slice' as a pass reaches it;
// resolves with the 'final' event's data ({result, labels: {name: {value, mask}}}). Aborting
// `signal` cancels it on the server too (an AbortError is thrown here).
export const streamsAnswered = []; // the last few answers as they came ({params, text}), for tests and scripts

export async function segment(image, params, { signal, onEvent, label = null } = {}) {
  const form = new FormData();
  form.append('params', JSON.stringify(params));
  if (label) form.append('label', label, label.name); // a mask_prompt from 'upload
  const record = { params: JSON.stringify(params), text: '' };
  const response = await fetch(`segment?image=${encodeURIComponent(image)}`, withAuth({ method: 'POST', body: form, signal }));
  if (!response.ok) throw await failure(response, 'segmenting');
  for await (const { name, data, text } of serverEvents(response)) {
    record.text += text;
    const parsed = JSON.parse(data);
    if (name === 'final') {
      streamsAnswered.push(record);
      if (streamsAnswered.length > 10) streamsAnswered.shift();
      return parsed;
    }
    if (name === 'error') {
      const error = new Error(`segmenting: ${plainDetail(parsed.status, parsed.detail)}`);
      error.status = parsed.status;
      throw error;
    }
    onEvent?.(name, parsed);
  }
  throw new Error('segmenting: the server ended the answer without a result; try again');
}

// A server-sent events answer, event by event: {name, data (its text), text (the block as sent)}.
async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = block.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
      yield { name, data, text: `${block}\n\n` };
    }
  }
}

// PUT /datastore/label?tag=final: each structure whole (a 4D stack, overlaps kept) with its name,
// label value and the voxels the page shows; the app makes the label map and refuses a file
// that holds anything else. Returns the app's answer, with what it stored under `saved`.
export class SaveConflict extends Error {}

// replaces: the version of the final label the page started from (null: none); the app refuses
// (409) when the label has changed since, instead of one save silently replacing another
// extra: more params (one_prompt_run: this save accepts that run's result, lib/one_prompt_runs.py)
export async function saveFinal(image, structures, replaces, extra = {}) {
  const bytes = await gzip(stackNiftiBytes(structures.map((s) => s.mask)));
  const form = new FormData();
  form.append('label', new Blob([bytes], { type: 'application/gzip' }), `${image}.nii.gz`);
  const labelInfo = structures.map((s) => ({ name: s.name, idx: s.idx, voxels: s.mask.count() }));
  form.append('params', JSON.stringify({ label_info: labelInfo, structures: true, replaces, client: 'medsam2-viewer',
    ...extra }));
  const url = `/datastore/label?image=${encodeURIComponent(image)}&tag=final`;
  const response = await fetch(url, withAuth({ method: 'PUT', body: form }));
  if (response.status === 409) throw new SaveConflict((await failure(response, 'saving')).message);
  if (!response.ok) throw await failure(response, 'saving');
  return response.json();
}

// The version of the study's final label now (null: it has none).
export async function finalVersion(image) {
  const response = await fetch(`/datastore/label/info?label=${encodeURIComponent(image)}&tag=final`, withAuth());
  if (response.status === 404) return null;
  if (!response.ok) throw await failure(response, 'reading the final label');
  return (await response.json()).version ?? null;
}

// The study's final label, each structure whole: {version, structures: [{name, idx, mask}]}.
export async function fetchFinal(image) {
  const response = await fetch(`label?image=${encodeURIComponent(image)}`, withAuth());
  if (response.status === 404) return { version: null, structures: [] };
  if (!response.ok) throw await failure(response, `reading the final label of ${image}`);
  const entries = JSON.parse(response.headers.get('X-Label-Info') || '[]');
  const masks = masksFromStack(await gunzip(await response.arrayBuffer()));
  if (masks.length !== entries.length) throw new Error('the saved label and its structure names do not match');
  return { version: response.headers.get('X-Label-Version') || null,
    structures: entries.map((entry, n) => ({ ...entry, mask: masks[n] })) };
}

// GET /medsam2/loop: progress, the fine-tune, the served weights, the learning curve, permissions.
export async function loopState() {
  const response = await fetch('/medsam2/loop', withAuth());
  if (!response.ok) throw await failure(response, 'reading the learning loop');
  return response.json();
}

// MONAI Label's active learning: the id of the study the strategy picks (null: none left).
export async function nextStudy(strategy) {
  const response = await fetch(`/activelearning/${encodeURIComponent(strategy)}`, withAuth({
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' }));
  if (!response.ok) throw await failure(response, 'asking for the next study');
  return (await response.json()).id || null;
}

export async function startFineTune(trainer) {
  const response = await fetch(`/train/${encodeURIComponent(trainer)}`, withAuth({
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' }));
  if (!response.ok) throw await failure(response, 'starting the fine-tune');
  return response.json();
}

export async function stopFineTune() {
  const response = await fetch('/train/', withAuth({ method: 'DELETE' }));
  if (response.status === 409) return { stopped: false }; // it had ended already: nothing to stop
  if (!response.ok) throw await failure(response, 'stopping the fine-tune');
  return response.json();
}

// GET /medsam2/events: the loop's state, pushed whenever it changes (server-sent events read
// through fetch, so the tab's log-in token goes with it). Calls onState(state) for each; returns
// a function that stops listening. Reconnects by itself after a dropped connection.
export function loopEvents(onState, onTrouble) {
  const controller = new AbortController();
  let stopped = false;
  (async () => {
    while (!stopped) {
      try {
        const response = await fetch('/medsam2/events', withAuth({ signal: controller.signal }));
        if (!response.ok) throw await failure(response, 'following the learning loop');
        for await (const { name, data } of serverEvents(response)) {
          if (name === 'loop' && data) onState(JSON.parse(data));
        }
      } catch (error) {
        if (stopped) return;
        onTrouble?.(error);
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  })();
  return () => { stopped = true; controller.abort(); };
}

// ---- one-prompt runs (/medsam2/one_prompt/..., lib/http/one_prompt.py) --------------------
async function askJson(url, what, options = {}) {
  const response = await fetch(url, withAuth(options));
  if (!response.ok) throw await failure(response, what);
  return response.json();
}

function postJson(body) {
  return { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) };
}

// body: {support, label, targets: [ids] or 'unlabelled'}; the run as the server has it
export function startOnePrompt(body) {
  return askJson('/medsam2/one_prompt/runs', 'starting one-prompt segmentation', postJson(body));
}

// body: {image, label}: a run onto the same patient's next study
export function startFollowUp(body) {
  return askJson('/medsam2/one_prompt/follow-up', 'carrying the structure to the follow-up', postJson(body));
}

// {date, grouped, later: [{image, date}]}: the patient's later studies
export function followUps(image) {
  return askJson(`/medsam2/one_prompt/follow-ups?image=${encodeURIComponent(image)}`, 'looking for follow-ups');
}

export function readRun(id) {
  return askJson(`/medsam2/one_prompt/runs/${encodeURIComponent(id)}`, 'reading the one-prompt run');
}

export function cancelRun(id) {
  return askJson(`/medsam2/one_prompt/runs/${encodeURIComponent(id)}`, 'cancelling the one-prompt run',
    { method: 'DELETE' });
}

export function rejectResult(id, image) {
  return askJson(`/medsam2/one_prompt/runs/${encodeURIComponent(id)}/reject?image=${encodeURIComponent(image)}`,
    'rejecting the result', { method: 'POST' });
}

// A run's result for one study, as a Mask on the study's grid
export async function runMask(id, image) {
  const url = `/medsam2/one_prompt/runs/${encodeURIComponent(id)}/mask?image=${encodeURIComponent(image)}`;
  const response = await fetch(url, withAuth());
  if (!response.ok) throw await failure(response, 'reading the one-prompt result');
  return masksFromStack(await gunzip(await response.arrayBuffer()))[0];
}

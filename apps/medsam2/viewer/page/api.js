// Calls to the app: MONAI Label's own endpoints, and the viewer's two routes.

import { Mask, gzip, toNiftiBytes } from './labelmap.js';

export const MODEL = 'medsam2_3d';

async function failure(response, what) {
  let detail = '';
  try {
    const body = await response.json();
    detail = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail ?? body);
  } catch {
    detail = await response.text().catch(() => '');
  }
  return new Error(`${what}: HTTP ${response.status}${detail ? ` - ${detail}` : ''}`);
}

export async function appInfo() {
  const response = await fetch('/info/');
  if (!response.ok) throw await failure(response, 'reading /info');
  const info = await response.json();
  const model = info.models?.[MODEL];
  if (!model) throw new Error(`this server has no ${MODEL} model`);
  const labels = Array.isArray(model.labels) ? model.labels : Object.keys(model.labels || {});
  return { info, labels: labels.length ? labels : info.labels || [] };
}

export async function listStudies() {
  const response = await fetch('studies');
  if (!response.ok) throw await failure(response, 'listing studies');
  return (await response.json()).studies;
}

export async function fetchVolume(image) {
  const response = await fetch(`volume?image=${encodeURIComponent(image)}`);
  if (!response.ok) throw await failure(response, `opening ${image}`);
  return response.arrayBuffer();
}

// One infer call with MONAI Label's request fields; returns {result (the JSON), mask (Mask)}.
export async function infer(image, params) {
  const form = new FormData();
  form.append(
    'params',
    JSON.stringify({ ...params, result_extension: '.nii', result_dtype: 'uint8', result_compress: false }),
  );
  const url = `/infer/${MODEL}?image=${encodeURIComponent(image)}&output=all`;
  const response = await fetch(url, { method: 'POST', body: form });
  if (!response.ok) throw await failure(response, 'segmenting');
  const type = response.headers.get('content-type') || '';
  if (!type.startsWith('multipart/')) {
    return { result: await response.json(), mask: null }; // the server sent no mask file
  }
  const parts = await response.formData();
  let result = parts.get('params');
  result = typeof result === 'string' ? JSON.parse(result) : JSON.parse(await result.text());
  const file = parts.get('image');
  const mask = file ? Mask.fromNifti(await file.arrayBuffer()) : null;
  return { result, mask };
}

// PUT /datastore/label?tag=final: the label map (gzipped NIfTI) and which value is which structure.
export async function saveFinal(image, labelMap, labelInfo) {
  const bytes = await gzip(toNiftiBytes(labelMap));
  const form = new FormData();
  form.append('label', new Blob([bytes], { type: 'application/gzip' }), `${image}.nii.gz`);
  form.append('params', JSON.stringify({ label_info: labelInfo, client: 'medsam2-viewer' }));
  const url = `/datastore/label?image=${encodeURIComponent(image)}&tag=final`;
  const response = await fetch(url, { method: 'PUT', body: form });
  if (!response.ok) throw await failure(response, 'saving');
  return response.json();
}

// The demo page: load the model (progress bar, "loaded from cache" on later visits), pick a
// photo (drop, file picker or a sample), stream the caption (at most "Max tokens" tokens), Stop,
// and show the statistics.

import { PocketVLM, NoWebGPUError, AbortError } from './pocketvlm/src/index.js';

const $ = (id) => document.getElementById(id);
const modelUrl = new URLSearchParams(location.search).get('model') ?? './model/';

let model = null;
let image = null;
let controller = null;

function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function showNoWebGPU(detail) {
  $('no-webgpu').hidden = false;
  $('no-webgpu-detail').textContent = detail ?? '';
  $('app').hidden = true;
}

function setProgress(fraction, text) {
  $('progress-bar').style.width = `${Math.round(fraction * 100)}%`;
  document.querySelector('.progress').setAttribute('aria-valuenow', String(Math.round(fraction * 100)));
  $('load-status').textContent = text;
}

function onProgress(p) {
  const fraction = p.totalBytes ? p.loadedBytes / p.totalBytes : 0;
  if (p.phase === 'upload') return setProgress(1, 'Uploading the weights to the GPU…');
  if (p.phase === 'prepare') return setProgress(1, 'Compiling the GPU kernels…');
  if (p.phase === 'ready') return;
  if (p.phase === 'warning') return console.warn(`PocketVLM: ${p.warning}`);
  const from = p.cacheHits === p.filesDone && p.filesDone > 0 ? ' (from cache)' : '';
  setProgress(fraction, `Downloading the model: ${formatBytes(p.loadedBytes)} of ${formatBytes(p.totalBytes)}, ` +
    `file ${p.filesDone}/${p.filesTotal}${from}`);
}

function updateRunButton() {
  $('run').disabled = !model || !image || controller !== null;
}

async function setImage(blob) {
  image = blob;
  const preview = $('preview');
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $('drop-hint').hidden = true;
  updateRunButton();
}

function showUsage(usage) {
  if (!usage) return;
  $('stat-ttft').textContent = `${usage.timeToFirstTokenMs.toFixed(0)} ms`;
  $('stat-prefill').textContent = `${usage.prefillTokensPerSecond.toFixed(1)} tok/s`;
  $('stat-decode').textContent = `${usage.decodeTokensPerSecond.toFixed(1)} tok/s`;
  $('stat-tokens').textContent = `${usage.promptTokens} in · ${usage.generatedTokens} out`;
  $('stat-memory').textContent = formatBytes(usage.gpuBytes);
  $('stat-kv').textContent = formatBytes(usage.kvCacheBytes);
}

async function caption(event) {
  event.preventDefault();
  if (!model || !image || controller) return;
  controller = new AbortController();
  updateRunButton();
  $('stop').disabled = false;
  const out = $('caption');
  out.textContent = '';
  out.classList.add('streaming');
  $('run-status').textContent = 'Reading the image…';
  let generation = null;
  try {
    // The form's validation (min, max, step, required) keeps this a whole number in range.
    const maxNewTokens = $('max-tokens').valueAsNumber;
    generation = await model.caption(image, { prompt: $('prompt').value, maxNewTokens, signal: controller.signal });
    $('run-status').textContent = 'Generating…';
    for await (const piece of generation) out.textContent += piece;
    $('run-status').textContent = 'Done.';
  } catch (e) {
    $('run-status').textContent = e instanceof AbortError ? 'Stopped.' : `${e.name}: ${e.message}`;
  } finally {
    out.classList.remove('streaming');
    showUsage(generation?.usage);
    controller = null;
    $('stop').disabled = true;
    updateRunButton();
  }
}

function wireInputs() {
  const zone = $('drop-zone');
  $('file-input').addEventListener('change', (e) => e.target.files[0] && setImage(e.target.files[0]));
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('dragging'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('dragging');
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith('image/'));
    if (file) setImage(file);
  });
  for (const button of document.querySelectorAll('[data-sample]')) {
    button.addEventListener('click', async () => setImage(await (await fetch(button.dataset.sample)).blob()));
  }
  $('prompt-form').addEventListener('submit', caption);
  $('stop').addEventListener('click', () => controller?.abort());
}

async function main() {
  wireInputs();
  if (!navigator.gpu) return showNoWebGPU('navigator.gpu is missing.');
  try {
    model = await PocketVLM.load(modelUrl, { onProgress });
    const info = model.info;
    const source = info.loadedFromCache ? 'Loaded from cache' : `Downloaded ${formatBytes(info.downloadedBytes)}`;
    const scheme = info.bits ? ` ${info.bits}` : '';
    setProgress(1, `${source}. Model ready on ${info.adapter}: ${info.recipe}${scheme}, `
      + `${formatBytes(info.weightBytes)} of weights on the GPU, ${formatBytes(info.kvBytesPerToken)} of KV cache per token.`);
    $('load-panel').classList.add(info.loadedFromCache ? 'from-cache' : 'downloaded');
    updateRunButton();
  } catch (e) {
    if (e instanceof NoWebGPUError) return showNoWebGPU(e.message);
    setProgress(0, `Could not load the model: ${e.name}: ${e.message}`);
  }
}

main();

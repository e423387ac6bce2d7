// PocketVLM: SmolVLM in the browser. The engine runs in a dedicated worker by default
// (worker: false runs it on this thread); the API and its errors are the same either way.

import { Engine, settle } from './engine.js';
import { AbortError, NoWebGPUError, errorFromData } from './errors.js';
import { toRGBA } from './image.js';

export * from './errors.js';

/** Requests to an engine in a worker. */
class WorkerBackend {
  constructor() {
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.pending = new Map();
    this.nextId = 1;
    this.worker.onmessage = ({ data }) => {
      const call = this.pending.get(data.id);
      if (!call) return;
      if ('progress' in data) return call.onProgress?.(data.progress);
      this.pending.delete(data.id);
      if (data.ok) call.resolve(data.value);
      else call.reject(errorFromData(data.error));
    };
    this.worker.onerror = (event) => {
      const error = errorFromData({ name: 'PocketVLMError', message: `the worker failed: ${event.message}` });
      for (const call of this.pending.values()) call.reject(error);
      this.pending.clear();
    };
  }

  request(op, args, transfer = [], onProgress) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress });
      this.worker.postMessage({ id, op, args }, transfer);
    });
  }

  load(baseUrl, options, onProgress) {
    return this.request('load', { baseUrl, options }, [], onProgress);
  }
  start(kind, request, signal) {
    const id = this.nextId;
    const started = this.request('start', { kind, request }, request.rgba ? [request.rgba.buffer] : []);
    // The worker stops the image encoding and the prefill between their parts.
    const abort = () => this.worker.postMessage({ id: 0, op: 'abort', args: { request: id } });
    if (signal?.aborted) abort();
    else signal?.addEventListener('abort', abort, { once: true });
    return started.finally(() => signal?.removeEventListener('abort', abort));
  }
  next(generation) {
    return this.request('next', { generation });
  }
  close(generation) {
    return this.request('close', { generation });
  }
  async dispose() {
    await this.request('dispose', {});
    this.worker.terminate();
  }
}

/** The same requests to an engine on this thread, with the same error classes. */
class LocalBackend {
  constructor() {
    this.engine = new Engine();
  }
  async call(fn) {
    const reply = await settle(fn);
    if (!reply.ok) throw errorFromData(reply.error);
    return reply.value;
  }
  load(baseUrl, options, onProgress) {
    return this.call(() => this.engine.load(baseUrl, options, onProgress));
  }
  start(kind, request, signal) {
    return this.call(() => this.engine.start(kind, request, signal));
  }
  next(generation) {
    return this.call(() => this.engine.next(generation));
  }
  close(generation) {
    return this.call(() => this.engine.close(generation));
  }
  dispose() {
    return this.call(() => this.engine.dispose());
  }
}

function abortError(signal) {
  const reason = signal?.reason;
  return new AbortError(reason instanceof Error ? reason.message : 'the operation was aborted');
}

/**
 * One streamed answer: an async iterable of text pieces. When the iteration ends, `usage` holds
 * the token counts, timings and memory, and `text` the whole answer.
 */
export class Generation {
  constructor(backend, id, signal) {
    this.backend = backend;
    this.id = id;
    this.signal = signal;
    this.text = '';
    this.usage = undefined;
    this.ended = false;
  }

  async *[Symbol.asyncIterator]() {
    try {
      while (!this.ended) {
        if (this.signal?.aborted) throw abortError(this.signal);
        const step = await this.backend.next(this.id);
        if (step.done) {
          this.ended = true;
          this.usage = step.usage;
          return;
        }
        if (step.piece) {
          this.text += step.piece;
          yield step.piece;
        }
      }
    } finally {
      await this.stop();
    }
  }

  /** Stop generating now; the model stays usable. */
  async stop() {
    if (this.ended) return;
    this.ended = true;
    this.usage = await this.backend.close(this.id);
  }
}

export class PocketVLM {
  constructor(backend, info) {
    this.backend = backend;
    this.info = info;
  }

  /**
   * Load the model directory at `baseUrl` (manifest.json, tokenizer, shards).
   * @param {string} baseUrl
   * @param {{ onProgress?: (p: object) => void, signal?: AbortSignal, cache?: boolean, worker?: boolean, integrity?: string, memoryBudget?: number, kvCache?: 'latent' | 'latent-keys' | 'plain', prepare?: boolean }} [options]
   */
  static async load(baseUrl, { onProgress, signal, cache = true, worker = true, integrity, memoryBudget, kvCache, prepare = true } = {}) {
    if (typeof navigator === 'undefined' || !navigator.gpu) {
      throw new NoWebGPUError('this browser does not expose WebGPU (navigator.gpu is missing)');
    }
    if (signal?.aborted) throw abortError(signal);
    const base = new URL(baseUrl, globalThis.document?.baseURI ?? globalThis.location?.href).href;
    const backend = worker ? new WorkerBackend() : new LocalBackend();
    // The worker is terminated on abort; a local load gets the signal and stops its downloads.
    const options = { cache, integrity, memoryBudget, kvCache, prepare };
    const loading = backend.load(base, worker ? options : { ...options, signal }, onProgress);
    const aborted = new Promise((_, reject) => {
      signal?.addEventListener('abort', () => reject(abortError(signal)), { once: true });
    });
    try {
      const info = await Promise.race([loading, aborted]);
      return new PocketVLM(backend, info);
    } catch (e) {
      // A worker is stopped outright; a local load stops at its next file (or, if it had already
      // finished, its model is freed).
      if (worker) backend.worker.terminate();
      else loading.then(() => backend.dispose(), () => {});
      throw e;
    }
  }

  /**
   * Describe an image. Resolves once the prompt is processed; iterate the result for the text.
   * @param {Blob | ImageBitmap | ImageData | HTMLImageElement} image
   */
  async caption(image, { signal, ...options } = {}) {
    if (signal?.aborted) throw abortError(signal);
    const { rgba, width, height } = await toRGBA(image);
    const id = await this.backend.start('caption', { rgba, width, height, options }, signal);
    return new Generation(this.backend, id, signal);
  }

  /**
   * Answer the last user message of a conversation. Turns already computed by the previous chat
   * call are taken from its KV cache. At most one `{ type: 'image' }` part, given as `image`.
   */
  async chat(messages, { signal, image, ...options } = {}) {
    if (signal?.aborted) throw abortError(signal);
    const request = { messages, options };
    if (image !== undefined) Object.assign(request, await toRGBA(image));
    const id = await this.backend.start('chat', request, signal);
    return new Generation(this.backend, id, signal);
  }

  /** Free the GPU memory; the page can load a model again afterwards. */
  async dispose() {
    await this.backend.dispose();
  }
}

export default PocketVLM;

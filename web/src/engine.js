// The wasm engine behind one small request interface, used as is on the main thread
// (worker: false) and from the worker (worker.js) — so both give the same answers and errors.
//
//   load(baseUrl, { cache, signal, integrity, memoryBudget, kvCache, prepare }, onProgress) → info
//   start(kind, args, signal) → generation id      (kind 'caption' or 'chat'; `signal` stops the
//                                                   image encoding and the prompt's prefill)
//   next(id) → { piece } | { done: true, usage }
//   close(id) → usage
//   dispose()

import init, { Model } from '../pkg/pocketvlm_wasm.js';
import { errorToData } from './errors.js';

let ready;

export class Engine {
  constructor() {
    this.model = null;
    this.generations = new Map();
    this.nextId = 1;
  }

  // `signal` (main thread only: an AbortSignal cannot cross to a worker, which is terminated
  // instead) stops the download between files and cancels the request in flight.
  async load(baseUrl, { cache = true, signal, integrity, memoryBudget, kvCache, prepare = true } = {}, onProgress = () => {}) {
    if (typeof navigator === 'undefined' || !navigator.gpu) {
      throw { name: 'NoWebGPUError', message: 'this browser does not expose WebGPU (navigator.gpu is missing)' };
    }
    ready ??= init();
    await ready;
    const absolute = new URL(baseUrl, globalThis.location?.href).href;
    this.model = await Model.load(absolute, { cache, onProgress, signal, integrity, memoryBudget, kvCache, prepare });
    return this.model.info;
  }

  requireModel() {
    if (!this.model) throw { name: 'AbortError', message: 'the model was disposed' };
    return this.model;
  }

  async start(kind, { rgba, width = 0, height = 0, messages, options = {} }, signal) {
    const model = this.requireModel();
    const generation =
      kind === 'caption'
        ? await model.caption(rgba, width, height, options, signal)
        : await model.chat(messages, rgba ?? undefined, width, height, options, signal);
    const id = this.nextId++;
    this.generations.set(id, generation);
    return id;
  }

  async next(id) {
    const generation = this.generations.get(id);
    if (!generation) return { done: true };
    try {
      const piece = await generation.next();
      if (piece !== undefined) return { piece };
    } catch (e) {
      this.finish(id);
      throw e;
    }
    return { done: true, usage: this.finish(id) };
  }

  close(id) {
    return this.finish(id);
  }

  finish(id) {
    const generation = this.generations.get(id);
    if (!generation) return undefined;
    this.generations.delete(id);
    const usage = generation.usage();
    generation.close();
    generation.free();
    return usage;
  }

  dispose() {
    for (const id of [...this.generations.keys()]) this.finish(id);
    if (this.model) {
      this.model.dispose();
      this.model.free();
      this.model = null;
    }
  }
}

/** Run `fn`, turning any failure into structured-cloneable error data. */
export async function settle(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    return { ok: false, error: errorToData(e) };
  }
}

// The dedicated worker that runs the engine off the main thread. Requests arrive as
// { id, op, args } and are answered with { id, ok, value } or { id, ok: false, error };
// load progress is posted as { id, progress }. { op: 'abort', args: { request } } stops the start
// request `request` (an AbortSignal cannot cross to a worker); it is answered with id 0.

import { Engine, settle } from './engine.js';

const engine = new Engine();
/** The abort controllers of the start requests in progress, by request id. */
const starts = new Map();

async function start(id, { kind, request }) {
  const controller = new AbortController();
  starts.set(id, controller);
  try {
    return await engine.start(kind, request, controller.signal);
  } finally {
    starts.delete(id);
  }
}

self.onmessage = async ({ data: { id, op, args } }) => {
  const reply = await settle(() => {
    switch (op) {
      case 'load':
        return engine.load(args.baseUrl, args.options, (progress) => self.postMessage({ id, progress }));
      case 'start':
        return start(id, args);
      case 'abort':
        return starts.get(args.request)?.abort();
      case 'next':
        return engine.next(args.generation);
      case 'close':
        return engine.close(args.generation);
      case 'dispose':
        return engine.dispose();
      default:
        throw new TypeError(`unknown request ${op}`);
    }
  });
  self.postMessage({ id, ...reply });
};

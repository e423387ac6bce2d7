// The dedicated worker that runs the engine off the main thread. Requests arrive as
// { id, op, args } and are answered with { id, ok, value } or { id, ok: false, error };
// load progress is posted as { id, progress }.

import { Engine, settle } from './engine.js';

const engine = new Engine();

self.onmessage = async ({ data: { id, op, args } }) => {
  const reply = await settle(() => {
    switch (op) {
      case 'load':
        return engine.load(args.baseUrl, args.options, (progress) => self.postMessage({ id, progress }));
      case 'start':
        return engine.start(args.kind, args.request);
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

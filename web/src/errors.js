// The typed errors of the PocketVLM API. The engine (in a worker or on this thread) reports an
// error as { name, message, ...fields }; `errorFromData` turns that back into an instance of the
// class below with the same name, so `instanceof` works whichever thread the engine runs on.

export class PocketVLMError extends Error {
  constructor(message, fields = {}) {
    super(message);
    this.name = new.target.name;
    Object.assign(this, fields);
  }
}

/** WebGPU is missing (no `navigator.gpu`, no adapter, or no device). */
export class NoWebGPUError extends PocketVLMError {}
/** A model file could not be downloaded; `status` is the HTTP status when one arrived. */
export class FetchError extends PocketVLMError {}
/** A model file differs from the manifest: `shard`, `expected`, `expectedSha256`. */
export class IntegrityError extends PocketVLMError {}
export class DeviceLostError extends PocketVLMError {}
export class OutOfMemoryError extends PocketVLMError {}
/** The operation was stopped (an AbortSignal fired, or the model was disposed). */
export class AbortError extends PocketVLMError {}
/** The image could not be decoded. */
export class ImageDecodeError extends PocketVLMError {}
/** The prompt and `maxNewTokens` do not fit the model's context: `tokens`, `maxNewTokens`, `limit`. */
export class PromptTooLongError extends PocketVLMError {}
/** The model is valid but this runtime cannot run it (yet); the message says why. */
export class UnsupportedModelError extends PocketVLMError {}

const classes = {
  PocketVLMError,
  NoWebGPUError,
  FetchError,
  IntegrityError,
  DeviceLostError,
  OutOfMemoryError,
  AbortError,
  ImageDecodeError,
  PromptTooLongError,
  UnsupportedModelError,
  TypeError,
};

/** A plain, structured-cloneable description of an error. */
export function errorToData(error) {
  if (error && typeof error === 'object') {
    const data = { ...error, name: error.name ?? 'Error', message: String(error.message ?? error) };
    return JSON.parse(JSON.stringify(data));
  }
  return { name: 'Error', message: String(error) };
}

/** The typed error described by `data` (as made by `errorToData`). */
export function errorFromData(data) {
  const { name, message, ...fields } = data ?? {};
  if (name === 'TypeError') return Object.assign(new TypeError(message), fields);
  const Class = classes[name];
  if (Class) return new Class(message, fields);
  return Object.assign(new Error(message), { name: name ?? 'Error' }, fields);
}

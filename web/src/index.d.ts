// Types of the `pocketvlm` package (src/index.js).

export type ImageInput = Blob | ImageBitmap | ImageData | HTMLImageElement;

/** A load progress event. */
export interface Progress {
  /**
   * 'manifest': totals known; 'file': one file verified; 'upload': weights going to the GPU;
   * 'prepare': a caption's GPU kernels compiling (see `LoadOptions.prepare`); 'ready';
   * 'warning': the load worked around something (see `warning`), e.g. no browser cache.
   */
  phase: 'manifest' | 'file' | 'upload' | 'prepare' | 'ready' | 'warning';
  /** The file of a 'file' event. */
  file?: string;
  /** Whether that file came from the browser cache. */
  fromCache?: boolean;
  loadedBytes: number;
  totalBytes: number;
  filesDone: number;
  filesTotal: number;
  /** Files that came from the browser cache so far. */
  cacheHits: number;
  /** What a 'warning' event warns of. */
  warning?: string;
}

export interface LoadOptions {
  onProgress?: (progress: Progress) => void;
  signal?: AbortSignal;
  /** Keep the model files in the Cache API and reuse them (default true). */
  cache?: boolean;
  /** Run the engine in a dedicated Web Worker (default true). */
  worker?: boolean;
  /**
   * Pin the model: manifest.json's sha256 as Subresource Integrity, `sha256-<base64>`
   * (`openssl dgst -sha256 -binary manifest.json | base64`). The manifest holds every file's
   * sha256, so this pins every byte; a different manifest rejects with IntegrityError.
   */
  integrity?: string;
  /**
   * The most bytes of GPU storage buffers the model may hold (weights, caches, activations):
   * a load or a generation that would need more rejects with OutOfMemoryError, and the model
   * (or the page) stays usable. Default: only the adapter's limits.
   */
  memoryBudget?: number;
  /**
   * The KV cache of a compressed model's shared-latent layers. 'latent' (default): each token's
   * latent only, the least memory; every decode step rebuilds all cached keys from it.
   * 'latent-keys': the latent and each token's keys, rebuilt once — the same results, faster
   * decoding as the context grows, more memory. 'plain': keys and values, the most memory and on
   * CPU adapters the fastest decoding (BENCHMARKS.md). Anything else rejects with a TypeError.
   */
  kvCache?: 'latent' | 'latent-keys' | 'plain';
  /**
   * Compile the GPU kernels a caption uses before the load resolves (default true): the first
   * caption then waits for none of them (seconds on a software adapter), the load a little
   * longer. false compiles each kernel when a generation first needs it. Preparing needs the GPU
   * memory of a caption: under a `memoryBudget` too small for one the load rejects with
   * OutOfMemoryError (with false, only the generations that do not fit reject).
   */
  prepare?: boolean;
}

export interface ModelInfo {
  /** Every file came from the browser cache. */
  loadedFromCache: boolean;
  cacheHits: number;
  files: number;
  downloadedBytes: number;
  cacheAvailable: boolean;
  weightBytes: number;
  adapter: string;
  shaderF16: boolean;
  maxPositions: number;
  /** `dense` or the low-rank recipe that factored the model (`svd`, `qsvd`, `laser`, …). */
  recipe: string;
  /** The low-bit scheme (`w8a8`, `w4a8`, `w4a4`), or null for a float model. */
  bits: string | null;
  /** Bytes one token of context takes in the GPU's KV cache (the shared latent where allowed). */
  kvBytesPerToken: number;
  /** The KV cache the model keeps (`kvCache` of the load). */
  kvCache: 'latent' | 'latent-keys' | 'plain';
  /** What the model's manifest counts per token (16-bit K/V), or null without a compression section. */
  manifestKvBytesPerToken: number | null;
}

export interface GenerateOptions {
  /** Default 128. */
  maxNewTokens?: number;
  /** 0 (default) is greedy decoding. */
  temperature?: number;
  /** 0 (default) keeps every token. */
  topK?: number;
  /** 1 (default) keeps every token. */
  topP?: number;
  seed?: number;
  /** Split the image into tiles (default: the checkpoint's setting). */
  splitImage?: boolean;
  /**
   * Stops the image encoding and the prompt's processing between their parts (one half of a
   * vision layer, one decoder layer: the call then rejects with AbortError), and generation
   * within one token (the iteration then throws AbortError). The model stays usable.
   */
  signal?: AbortSignal;
}

export interface CaptionOptions extends GenerateOptions {
  /** Default "Can you describe this image?". */
  prompt?: string;
}

export type ContentPart = { type: 'image' } | { type: 'text'; text: string };

export interface ChatMessage {
  role: 'user' | 'assistant' | 'system';
  content: string | ContentPart[];
}

export interface ChatOptions extends GenerateOptions {
  /** The image of the conversation's `{ type: 'image' }` part, if it has one. */
  image?: ImageInput;
}

export interface Usage {
  promptTokens: number;
  /** Prompt tokens taken from the previous chat turn's KV cache. */
  reusedPromptTokens: number;
  generatedTokens: number;
  timeToFirstTokenMs: number;
  preprocessMs: number;
  visionMs: number;
  prefillMs: number;
  decodeMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  kvCacheBytes: number;
  weightBytes: number;
  /** Weights, tables, KV cache and activations on the GPU. */
  gpuBytes: number;
}

/** A streamed answer: iterate it for text pieces; `usage` and `text` are complete at the end. */
export declare class Generation implements AsyncIterable<string> {
  private constructor();
  [Symbol.asyncIterator](): AsyncIterator<string>;
  /** The text so far. */
  readonly text: string;
  /** Set when the iteration ends (or after `stop()`). */
  readonly usage: Usage | undefined;
  /** Stop generating now; the model stays usable. */
  stop(): Promise<void>;
}

export declare class PocketVLM {
  private constructor();
  static load(baseUrl: string | URL, options?: LoadOptions): Promise<PocketVLM>;
  readonly info: ModelInfo;
  caption(image: ImageInput, options?: CaptionOptions): Promise<Generation>;
  chat(messages: ChatMessage[], options?: ChatOptions): Promise<Generation>;
  dispose(): Promise<void>;
}
export default PocketVLM;

export declare class PocketVLMError extends Error {}
export declare class NoWebGPUError extends PocketVLMError {}
export declare class FetchError extends PocketVLMError {
  /** The HTTP status, absent for network and CORS failures. */
  readonly status?: number;
  readonly url?: string;
}
export declare class IntegrityError extends PocketVLMError {
  readonly shard: string;
  /** "sha256 <hex>" or "<n> bytes". */
  readonly expected: string;
  readonly expectedSha256?: string;
}
export declare class DeviceLostError extends PocketVLMError {}
export declare class OutOfMemoryError extends PocketVLMError {}
export declare class AbortError extends PocketVLMError {}
export declare class ImageDecodeError extends PocketVLMError {}
/** The prompt and `maxNewTokens` do not fit in the model's context: `tokens + maxNewTokens ≤ limit` is needed. */
export declare class PromptTooLongError extends PocketVLMError {
  readonly tokens: number;
  readonly maxNewTokens: number;
  readonly limit: number;
}
/** The model is valid but this runtime cannot run it, e.g. arithmetic its kernels lack; the message names the tensor and the reason. */
export declare class UnsupportedModelError extends PocketVLMError {}

export declare function errorToData(error: unknown): { name: string; message: string; [field: string]: unknown };
export declare function errorFromData(data: { name?: string; message?: string; [field: string]: unknown }): Error;

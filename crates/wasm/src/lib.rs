//! PocketVLM in the browser: the wasm-bindgen API that the npm package `pocketvlm` (in `web/`)
//! wraps. JavaScript owns the generation loop, so it can stream and stop between two tokens:
//!
//! ```text
//! const model = await Model.load(baseUrl, { cache: true, onProgress });
//! const generation = await model.caption(rgba, width, height, { maxNewTokens: 64 });
//! for (let piece; (piece = await generation.next()) !== undefined; ) show(piece);
//! generation.usage();   // tokens, time to first token, tokens/s, GPU bytes
//! generation.close();   // a chat generation hands its KV cache back for the next turn
//! model.dispose();
//! ```
//!
//! Errors are JavaScript `Error`s whose `name` is one of the classes in [`errors::ErrorName`].
//! The pure parts (options, errors, usage, progress) build and are tested natively too.

pub mod errors;
pub mod integrity;
pub mod options;
pub mod progress;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
pub mod fetch;
#[cfg(target_arch = "wasm32")]
mod js;
#[cfg(target_arch = "wasm32")]
pub mod loader;
#[cfg(target_arch = "wasm32")]
pub mod shard_cache;

#[cfg(target_arch = "wasm32")]
pub use api::{Generation, Model, OpenOptions};

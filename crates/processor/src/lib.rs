//! SmolVLM (Hugging Face `Idefics3Processor`) preprocessing, natively and in wasm32.
//!
//! * [`Preprocessor`]: an RGB image → `M × M` tiles (Pillow-exact Lanczos, see [`resize`]) →
//!   normalized channel-first `f32` pixel values, with the tile grid (`rows`, `cols`).
//! * [`decode_image`]: PNG/JPEG bytes → [`RgbImage`]; [`RgbImage::from_rgba`] takes pixels the
//!   browser already decoded.
//! * [`Prompt`]: chat template rendering, `<image>` expansion into tile tokens, tokenization,
//!   and (streaming) detokenization.
//!
//! ```no_run
//! # use pocketvlm_processor::*;
//! # fn demo(pcfg: &pocketvlm_format::config::ProcessorConfig,
//! #         tcfg: &pocketvlm_format::config::TokenizerInfo,
//! #         tokenizer_json: &[u8], png: &[u8]) -> Result<(), ProcessorError> {
//! let pre = Preprocessor::new(pcfg)?;
//! let prompt = Prompt::new(tokenizer_json, tcfg, pcfg.image_seq_len)?;
//! let image = pre.preprocess(&decode_image(png)?, pcfg.do_image_splitting)?;
//! let messages = [Message::new("user", vec![Part::Image, Part::text("What is this?")])];
//! let text = prompt.render(&messages, true)?;
//! let ids = prompt.encode(&text, &[image.grid()])?;
//! // feed `ids` and `image.pixel_values` ([n_tiles, 3, M, M]) to the model
//! # Ok(()) }
//! ```

mod error;
mod image;
mod preprocess;
mod prompt;
pub mod resize;

pub use crate::error::ProcessorError;
pub use crate::image::{
    AlphaHandling, DecodeOptions, MAX_IMAGE_PIXELS, RgbImage, decode_image, decode_image_with,
};
pub use crate::preprocess::{ImageGrid, MAX_IMAGE_SIZE, PreparedImage, Preprocessor};
pub use crate::prompt::{Content, Message, Part, Prompt, SpecialTokens, StreamDecoder};

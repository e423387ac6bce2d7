use thiserror::Error;

/// Everything that can go wrong while preparing model inputs.
#[derive(Debug, Error)]
pub enum ProcessorError {
    /// The bytes are not a PNG/JPEG this crate can decode (corrupt, truncated, other format).
    #[error("cannot decode image: {0}")]
    ImageDecode(String),
    /// The image declares more pixels than [`crate::MAX_IMAGE_PIXELS`] (a decompression
    /// bomb, refused from its header before anything is allocated).
    #[error("the image declares {width}×{height} pixels; at most {limit} are accepted")]
    ImageTooLarge { width: u64, height: u64, limit: u64 },
    /// A pixel buffer does not match its stated size, or a size is zero.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// A processor setting this implementation does not support.
    #[error("unsupported processor setting: {0}")]
    UnsupportedConfig(String),
    /// `tokenizer.json` could not be loaded, or encoding/decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template does not compile or failed to render (including `raise_exception`).
    #[error("chat template: {0}")]
    Template(String),
    /// A special token the prompt format needs is missing from the vocabulary.
    #[error("special token {0:?} is not in the tokenizer vocabulary")]
    UnknownSpecialToken(String),
    /// The text's `<image>` placeholders and the given images disagree in number.
    #[error("the prompt has {placeholders} image placeholder(s) but {images} image(s) were given")]
    ImageCountMismatch { placeholders: usize, images: usize },
}

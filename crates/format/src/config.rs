//! The model configuration stored in the manifest.
//!
//! Every architecture number the runtime needs is stored explicitly; nothing here has a serde
//! default, so a manifest missing a key fails to load instead of silently assuming a value.
//! (Hugging Face's `Idefics3Config` falls back to `LlamaConfig` defaults for absent text keys;
//! the converter resolves those explicitly and records which keys it resolved that way.)

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};

/// `Idefics3ForConditionalGeneration`: SigLIP vision tower → pixel-shuffle connector → Llama decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub architecture: String,
    pub vision: VisionConfig,
    pub connector: ConnectorConfig,
    pub text: TextConfig,
    /// Id of the `<image>` placeholder token whose embeddings are replaced by image features.
    pub image_token_id: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    /// Side of one square tile in pixels (also the processor's `max_image_size`).
    pub image_size: usize,
    /// Side of one patch (the stride of the patch-embedding convolution). It need not divide
    /// `image_size`: SmolVLM-Instruct's 384-px tiles with patch 14 give 27×27 patches and the
    /// convolution never reads the last 6 pixel rows and columns (see [`Self::patches_per_side`]).
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Pixel-shuffle factor s: s×s neighbouring patches become one token with s²·D channels.
    pub scale_factor: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub hidden_act: String,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// Patches per tile side, `⌊image_size / patch_size⌋`: transformers' `Conv2d(kernel = stride =
    /// P, padding "valid")` and its patch mask (`unfold` with step P) both floor, and so do the
    /// position embeddings (`image_size // patch_size` per side).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }
}

impl ModelConfig {
    /// Image tokens one tile contributes to the prompt: (patches per side / s)².
    pub fn image_seq_len(&self) -> usize {
        let side = self.vision.patches_per_side() / self.connector.scale_factor;
        side * side
    }

    /// Check the internal consistency of the numbers (divisibility, supported activations).
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let positive = [
            ("vision.hidden_size", v.hidden_size),
            ("vision.intermediate_size", v.intermediate_size),
            ("vision.num_attention_heads", v.num_attention_heads),
            ("vision.num_channels", v.num_channels),
            ("vision.image_size", v.image_size),
            ("vision.patch_size", v.patch_size),
            ("connector.scale_factor", self.connector.scale_factor),
            ("text.vocab_size", t.vocab_size),
            ("text.hidden_size", t.hidden_size),
            ("text.intermediate_size", t.intermediate_size),
            ("text.num_attention_heads", t.num_attention_heads),
            ("text.num_key_value_heads", t.num_key_value_heads),
            ("text.head_dim", t.head_dim),
            ("text.max_position_embeddings", t.max_position_embeddings),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(FormatError::invalid(key, "must be positive"));
            }
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(FormatError::invalid(
                "vision.num_attention_heads",
                format!("{} heads do not divide hidden size {}", v.num_attention_heads, v.hidden_size),
            ));
        }
        if v.patch_size > v.image_size {
            return Err(FormatError::invalid(
                "vision.patch_size",
                format!("patch {} is larger than the image size {}", v.patch_size, v.image_size),
            ));
        }
        if !v.patches_per_side().is_multiple_of(self.connector.scale_factor) {
            return Err(FormatError::invalid(
                "connector.scale_factor",
                format!(
                    "scale factor {} does not divide {} patches per side",
                    self.connector.scale_factor,
                    v.patches_per_side()
                ),
            ));
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return Err(FormatError::invalid(
                "text.num_key_value_heads",
                format!(
                    "{} key-value heads do not divide {} query heads",
                    t.num_key_value_heads, t.num_attention_heads
                ),
            ));
        }
        if !t.head_dim.is_multiple_of(2) {
            return Err(FormatError::invalid("text.head_dim", "RoPE needs an even head dimension"));
        }
        if !(t.rms_norm_eps > 0.0 && v.layer_norm_eps > 0.0 && t.rope_theta > 0.0) {
            return Err(FormatError::invalid("eps/rope_theta", "must be positive"));
        }
        if v.hidden_act != "gelu_pytorch_tanh" {
            return Err(FormatError::Unsupported(format!(
                "vision activation {:?} (only gelu_pytorch_tanh)",
                v.hidden_act
            )));
        }
        if t.hidden_act != "silu" {
            return Err(FormatError::Unsupported(format!("text activation {:?} (only silu)", t.hidden_act)));
        }
        if self.image_token_id as usize >= t.vocab_size {
            return Err(FormatError::invalid("image_token_id", "outside the vocabulary"));
        }
        Ok(())
    }
}

/// Image preprocessing settings (Hugging Face `Idefics3ImageProcessor`, PIL path).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    /// Resize so the longest edge equals this (`size.longest_edge`).
    pub longest_edge: usize,
    /// Tile side M (`max_image_size.longest_edge`).
    pub max_image_size: usize,
    pub do_image_splitting: bool,
    /// Resampling filter; only `"lanczos"` is supported (PIL's LANCZOS = 1).
    pub resample: String,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub do_pad: bool,
    /// `<image>` tokens per tile in the prompt.
    pub image_seq_len: usize,
}

/// Tokenizer and chat prompt settings. The tokenizer itself is `tokenizer.json` beside the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInfo {
    /// File name of the Hugging Face `tokenizer.json`, relative to the manifest.
    pub file: String,
    pub sha256: String,
    /// The Jinja chat template.
    pub chat_template: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub image_token: String,
    pub fake_image_token: String,
    pub global_image_token: String,
    pub end_of_utterance_token: String,
}

/// Generation defaults from the checkpoint's `generation_config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

//! Reading a Hugging Face SmolVLM checkpoint's JSON files into the manifest's config sections.
//!
//! The reference implementation fills absent keys from class defaults (`Idefics3VisionConfig`,
//! `LlamaConfig` for the text model, `Idefics3ImageProcessor`). We resolve those explicitly from
//! the tables below, and every key resolved that way is reported in `defaulted_keys`, so no value
//! reaches the manifest without either coming from the checkpoint or being named as a default.

use std::path::Path;

use pocketvlm_format::{
    ConnectorConfig, FormatError, GenerationConfig, ModelConfig, ProcessorConfig, TextConfig, VisionConfig,
};
use serde_json::Value;

use crate::error::{CompressError, Result};

/// Architectures with the Idefics3 layout (SmolVLM checkpoints use either name).
pub const ARCHITECTURES: [&str; 2] = ["Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"];

/// Reads a JSON file, mapping failures to typed errors.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CompressError::Format(FormatError::Io { path: path.display().to_string(), source: e })
    })?;
    serde_json::from_str(&text)
        .map_err(|e| CompressError::BadJson { path: path.display().to_string(), reason: e.to_string() })
}

/// A JSON object with its dotted path, resolving absent keys from explicit defaults.
pub struct Section<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> Section<'a> {
    pub fn new(value: &'a Value, path: &str) -> Self {
        Self { value, path: path.to_string() }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn child(&self, key: &str) -> Result<Section<'a>> {
        let value = self.get(key).ok_or_else(|| FormatError::MissingConfigKey { key: self.key(key) })?;
        Ok(Section { value, path: self.key(key) })
    }

    fn typed<T>(&self, key: &str, parse: impl Fn(&Value) -> Option<T>, kind: &str) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).ok_or_else(|| {
                FormatError::invalid(self.key(key), format!("expected {kind}, found {v}")).into()
            }),
        }
    }

    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.typed(key, |v| v.as_u64().map(|x| x as usize), "a non-negative integer")
    }
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, Value::as_f64, "a number")
    }
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, Value::as_bool, "a boolean")
    }
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        self.typed(key, |v| v.as_str().map(str::to_string), "a string")
    }

    /// The value, or `default` recorded in `defaulted` as `path.key=default`.
    pub fn or<T: std::fmt::Debug>(
        &self,
        value: Option<T>,
        key: &str,
        default: T,
        defaulted: &mut Vec<String>,
    ) -> T {
        value.unwrap_or_else(|| {
            defaulted.push(format!("{}={default:?}", self.key(key)));
            default
        })
    }

    pub fn required<T>(&self, value: Option<T>, key: &str) -> Result<T> {
        value.ok_or_else(|| FormatError::MissingConfigKey { key: self.key(key) }.into())
    }
}

/// `config.json` → [`ModelConfig`].
pub fn model_config(config: &Value, defaulted: &mut Vec<String>) -> Result<ModelConfig> {
    let root = Section::new(config, "");
    let architecture = match config.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str) {
        Some(a) if ARCHITECTURES.contains(&a) => a.to_string(),
        Some(other) => {
            return Err(FormatError::Unsupported(format!(
                "architecture {other:?} (PocketVLM converts {})",
                ARCHITECTURES.join(" / ")
            ))
            .into());
        }
        None => return Err(FormatError::MissingConfigKey { key: "architectures".into() }.into()),
    };

    let v = root.child("vision_config")?;
    let vision = VisionConfig {
        hidden_size: v.or(v.usize("hidden_size")?, "hidden_size", 1152, defaulted),
        intermediate_size: v.or(v.usize("intermediate_size")?, "intermediate_size", 3072, defaulted),
        num_hidden_layers: v.or(v.usize("num_hidden_layers")?, "num_hidden_layers", 12, defaulted),
        num_attention_heads: v.or(v.usize("num_attention_heads")?, "num_attention_heads", 16, defaulted),
        num_channels: v.or(v.usize("num_channels")?, "num_channels", 3, defaulted),
        image_size: v.or(v.usize("image_size")?, "image_size", 224, defaulted),
        patch_size: v.or(v.usize("patch_size")?, "patch_size", 32, defaulted),
        layer_norm_eps: v.or(v.f64("layer_norm_eps")?, "layer_norm_eps", 1e-6, defaulted),
        hidden_act: v.or(v.string("hidden_act")?, "hidden_act", "gelu_pytorch_tanh".into(), defaulted),
    };

    let t = root.child("text_config")?;
    if let Some(mt) = t.string("model_type")?
        && mt != "llama"
    {
        return Err(FormatError::Unsupported(format!("text model_type {mt:?} (only llama)")).into());
    }
    for flag in ["attention_bias", "mlp_bias"] {
        if t.bool(flag)? == Some(true) {
            return Err(FormatError::Unsupported(format!("text_config.{flag} = true")).into());
        }
    }
    let hidden_size = t.or(t.usize("hidden_size")?, "hidden_size", 4096, defaulted);
    let heads = t.or(t.usize("num_attention_heads")?, "num_attention_heads", 32, defaulted);
    let kv_heads = t.or(t.usize("num_key_value_heads")?, "num_key_value_heads", heads, defaulted);
    let head_dim = t.or(t.usize("head_dim")?, "head_dim", hidden_size / heads.max(1), defaulted);
    let text = TextConfig {
        vocab_size: t.or(t.usize("vocab_size")?, "vocab_size", 32000, defaulted),
        hidden_size,
        intermediate_size: t.or(t.usize("intermediate_size")?, "intermediate_size", 11008, defaulted),
        num_hidden_layers: t.or(t.usize("num_hidden_layers")?, "num_hidden_layers", 32, defaulted),
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: t.or(t.f64("rms_norm_eps")?, "rms_norm_eps", 1e-6, defaulted),
        rope_theta: rope_theta(&t, defaulted)?,
        max_position_embeddings: t.or(
            t.usize("max_position_embeddings")?,
            "max_position_embeddings",
            2048,
            defaulted,
        ),
        tie_word_embeddings: {
            // The conditional-generation model ties lm_head to the embeddings according to the
            // top-level flag (default false); the text config's own flag is not consulted.
            root.or(root.bool("tie_word_embeddings")?, "tie_word_embeddings", false, defaulted)
        },
        hidden_act: t.or(t.string("hidden_act")?, "hidden_act", "silu".into(), defaulted),
    };

    let cfg = ModelConfig {
        architecture,
        vision,
        connector: ConnectorConfig {
            scale_factor: root.or(root.usize("scale_factor")?, "scale_factor", 2, defaulted),
        },
        text,
        image_token_id: root.or(root.usize("image_token_id")?, "image_token_id", 128257, defaulted) as u32,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// RoPE base: `rope_parameters.rope_theta` (transformers 5) or legacy `rope_theta`; scaled RoPE
/// variants are rejected because the runtime implements only the default rotation.
fn rope_theta(t: &Section<'_>, defaulted: &mut Vec<String>) -> Result<f64> {
    if let Some(params) = t.get("rope_parameters") {
        let p = Section::new(params, "text_config.rope_parameters");
        if let Some(kind) = p.string("rope_type")?
            && kind != "default"
        {
            return Err(FormatError::Unsupported(format!("RoPE type {kind:?}")).into());
        }
        if let Some(theta) = p.f64("rope_theta")? {
            return Ok(theta);
        }
    }
    if let Some(scaling) = t.get("rope_scaling") {
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str);
        if kind != Some("default") {
            return Err(FormatError::Unsupported(format!("rope_scaling {scaling}")).into());
        }
    }
    Ok(t.or(t.f64("rope_theta")?, "rope_theta", 10000.0, defaulted))
}

/// Image-processor settings (`preprocessor_config.json`, or the `image_processor` entry of
/// `processor_config.json`) plus the processor's `image_seq_len`.
pub fn processor_config(
    image_processor: &Value,
    processor: Option<&Value>,
    model: &ModelConfig,
    defaulted: &mut Vec<String>,
) -> Result<ProcessorConfig> {
    let p = Section::new(image_processor, "image_processor");
    let edge = |key: &str, default: usize, defaulted: &mut Vec<String>| -> Result<usize> {
        match p.get(key) {
            Some(obj) => Section::new(obj, &p.key(key))
                .required(Section::new(obj, &p.key(key)).usize("longest_edge")?, "longest_edge"),
            None => Ok(p.or(None, key, default, defaulted)),
        }
    };
    let resample = match p.usize("resample")? {
        None => p.or(None, "resample", "lanczos".to_string(), defaulted),
        Some(1) => "lanczos".to_string(),
        Some(other) => {
            return Err(FormatError::Unsupported(format!(
                "image_processor.resample = {other} (only LANCZOS = 1)"
            ))
            .into());
        }
    };
    let triple = |key: &str, defaulted: &mut Vec<String>| -> Result<[f64; 3]> {
        match p.get(key) {
            None => Ok(p.or(None, key, [0.5; 3], defaulted)),
            Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => {
                Ok([0, 1, 2].map(|i| a[i].as_f64().unwrap_or_default()))
            }
            Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or_default(); 3]),
            Some(other) => {
                Err(FormatError::invalid(p.key(key), format!("expected 3 numbers, found {other}")).into())
            }
        }
    };
    let seq = processor.map(|v| Section::new(v, "processor"));
    let image_seq_len = match seq.as_ref().map(|s| s.usize("image_seq_len")).transpose()?.flatten() {
        Some(n) => n,
        None => {
            defaulted
                .push(format!("processor.image_seq_len={} (from the model config)", model.image_seq_len()));
            model.image_seq_len()
        }
    };
    let cfg = ProcessorConfig {
        do_convert_rgb: p.or(p.bool("do_convert_rgb")?, "do_convert_rgb", true, defaulted),
        do_resize: p.or(p.bool("do_resize")?, "do_resize", true, defaulted),
        longest_edge: edge("size", 4 * 364, defaulted)?,
        max_image_size: edge("max_image_size", 364, defaulted)?,
        do_image_splitting: p.or(p.bool("do_image_splitting")?, "do_image_splitting", true, defaulted),
        resample,
        do_rescale: p.or(p.bool("do_rescale")?, "do_rescale", true, defaulted),
        rescale_factor: p.or(p.f64("rescale_factor")?, "rescale_factor", 1.0 / 255.0, defaulted),
        do_normalize: p.or(p.bool("do_normalize")?, "do_normalize", true, defaulted),
        image_mean: triple("image_mean", defaulted)?,
        image_std: triple("image_std", defaulted)?,
        do_pad: p.or(p.bool("do_pad")?, "do_pad", true, defaulted),
        image_seq_len,
    };
    if cfg.max_image_size != model.vision.image_size {
        return Err(FormatError::invalid(
            "image_processor.max_image_size",
            format!(
                "{} differs from the vision tower's image_size {}",
                cfg.max_image_size, model.vision.image_size
            ),
        )
        .into());
    }
    if cfg.image_seq_len != model.image_seq_len() {
        return Err(FormatError::invalid(
            "processor.image_seq_len",
            format!(
                "{} differs from the {} tokens a tile produces",
                cfg.image_seq_len,
                model.image_seq_len()
            ),
        )
        .into());
    }
    Ok(cfg)
}

/// `generation_config.json` (or, when absent, the model config's token ids) → [`GenerationConfig`].
pub fn generation_config(generation: Option<&Value>, config: &Value) -> Result<GenerationConfig> {
    let source = generation.unwrap_or(config);
    let name = if generation.is_some() { "generation_config" } else { "config" };
    let s = Section::new(source, name);
    let text = config.get("text_config");
    let id = |key: &str| -> Result<Option<u32>> {
        let own = s.usize(key)?;
        let from_text = match (own, text) {
            (None, Some(t)) if generation.is_none() => Section::new(t, "text_config").usize(key)?,
            _ => None,
        };
        Ok(own.or(from_text).map(|x| x as u32))
    };
    let eos_token_ids = match s.get("eos_token_id") {
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|v| v.as_u64().map(|x| x as u32))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| FormatError::invalid(format!("{name}.eos_token_id"), "expected integers"))?,
        _ => vec![
            id("eos_token_id")?
                .ok_or_else(|| FormatError::MissingConfigKey { key: format!("{name}.eos_token_id") })?,
        ],
    };
    Ok(GenerationConfig {
        bos_token_id: id("bos_token_id")?,
        eos_token_ids,
        pad_token_id: id("pad_token_id")?,
    })
}

//! A chat request run on the CPU model exactly as the GPU engine runs it: the same chat
//! template, image preprocessing and prompt ids, then greedy decoding. For a quantized model
//! this is the integer contract's CPU reference of a whole generation, what the GPU must match
//! (`cargo xtask caption --cpu`, the runtime's whole-model tests).

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use pocketvlm_format::{Manifest, dir};
use pocketvlm_processor::{Message, Preprocessor, Prompt as ChatPrompt, RgbImage};

use crate::error::Result;
use crate::model::{CpuModel, Prompt};

/// A model directory on the CPU with its tokenizer and image preprocessor.
pub struct Reference {
    pub manifest: Manifest,
    pub model: CpuModel,
    pub chat: ChatPrompt,
    pub preprocessor: Preprocessor,
}

/// What a request computed.
pub struct ReferenceRun {
    pub prompt_ids: Vec<u32>,
    /// Logits at the last prompt position.
    pub prompt_logits: Vec<f32>,
    /// Greedy ids (stopping after an end-of-generation id, which is kept).
    pub generated_ids: Vec<u32>,
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

impl Reference {
    pub fn open(model_dir: &Path) -> Result<Self> {
        let manifest = dir::read_manifest(model_dir)?;
        let tokenizer = dir::read_tokenizer(model_dir, &manifest)?;
        let chat = ChatPrompt::new(&tokenizer, &manifest.tokenizer, manifest.processor.image_seq_len)?;
        let preprocessor = Preprocessor::new(&manifest.processor)?;
        let model = CpuModel::from_format(model_dir)?;
        Ok(Self { manifest, model, chat, preprocessor })
    }

    /// Render `messages` with the generation prompt, preprocess `image` (split by the checkpoint's
    /// default unless `split` says), encode, and decode greedily up to `max_new_tokens`.
    pub fn run(
        &self,
        messages: &[Message],
        image: Option<&RgbImage>,
        split: Option<bool>,
        max_new_tokens: usize,
    ) -> Result<ReferenceRun> {
        let t0 = Instant::now();
        let rendered = self.chat.render(messages, true)?;
        let split = split.unwrap_or(self.preprocessor.default_split());
        let prepared = image.map(|i| self.preprocessor.preprocess(i, split)).transpose()?;
        let grids: Vec<_> = prepared.iter().map(|p| p.grid()).collect();
        let prompt_ids = self.chat.encode(&rendered, &grids)?;
        let pixels = prepared
            .map(|p| Tensor::from_vec(p.pixel_values, (p.n_tiles, 3, p.tile_size, p.tile_size), &Device::Cpu))
            .transpose()?;
        let prompt = Prompt { ids: prompt_ids, pixels };
        let preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let embeds = self.model.embed_prompt(&prompt, None)?;
        let vision_ms = t1.elapsed().as_secs_f64() * 1e3;
        let greedy = self.model.greedy(&embeds, max_new_tokens, &self.manifest.generation.eos_token_ids)?;
        Ok(ReferenceRun {
            prompt_ids: prompt.ids,
            prompt_logits: greedy.prompt_logits,
            generated_ids: greedy.ids,
            preprocess_ms,
            vision_ms,
            prefill_ms: greedy.prefill_ms,
            decode_ms: greedy.decode_ms,
        })
    }
}

impl Reference {
    /// A whole-model expectation in the shape of the fixtures' transformers cases
    /// (`tests/fixtures/*/expected/<case>.json`): `case` with `prompt_ids`, `top_logits` (the
    /// ten largest `[id, logit]` at the last prompt position) and `generated_ids` replaced by what
    /// this reference computes for the case's messages, image splitting and token limit, and
    /// `"expected_by": "cpu-reference"`.
    pub fn expectation(
        &self,
        case: &serde_json::Value,
        image: Option<&RgbImage>,
    ) -> Result<serde_json::Value> {
        let bad = |what: &str| crate::error::CompressError::Calibration(format!("case JSON: {what}"));
        let messages: Vec<Message> =
            serde_json::from_value(case["messages"].clone()).map_err(|e| bad(&format!("messages: {e}")))?;
        let split = case["do_image_splitting"].as_bool();
        let max_new = case["max_new_tokens"].as_u64().ok_or_else(|| bad("max_new_tokens"))? as usize;
        let run = self.run(&messages, image, split, max_new)?;
        let mut order: Vec<usize> = (0..run.prompt_logits.len()).collect();
        order.sort_by(|&a, &b| run.prompt_logits[b].total_cmp(&run.prompt_logits[a]).then(a.cmp(&b)));
        let top: Vec<(u32, f32)> = order.iter().take(10).map(|&i| (i as u32, run.prompt_logits[i])).collect();
        let mut out = case.clone();
        out["prompt_ids"] = serde_json::json!(run.prompt_ids);
        out["top_logits"] = serde_json::json!(top);
        out["generated_ids"] = serde_json::json!(run.generated_ids);
        out["expected_by"] = serde_json::json!("cpu-reference");
        Ok(out)
    }
}

/// A quantization recipe by name, as `cargo xtask compress --bits … [--group-size …]
/// [--float …]` gives it.
#[derive(Clone, Copy, Debug)]
pub struct QuantRecipe {
    /// A short name (a directory name).
    pub name: &'static str,
    pub bits: &'static str,
    pub group: Option<usize>,
    /// Comma-separated parts kept float (`--float`).
    pub float: &'static str,
}

/// The quantized variants of the tiny fixture that the whole-model tests run on the GPU, natively
/// and in the browser, against this reference: every scheme, per-channel and grouped INT4
/// weights, and float parts.
pub const TEST_RECIPES: [QuantRecipe; 5] = [
    QuantRecipe { name: "w8a8", bits: "w8a8", group: None, float: "" },
    QuantRecipe { name: "w4a8", bits: "w4a8", group: None, float: "" },
    QuantRecipe { name: "w4a8-g64", bits: "w4a8", group: Some(64), float: "" },
    QuantRecipe { name: "w4a4", bits: "w4a4", group: None, float: "" },
    QuantRecipe { name: "w8a8-float-vision-lm_head", bits: "w8a8", group: None, float: "vision,lm_head" },
];

/// The cases of the tiny fixture the quantized variants are checked on (one text, one image).
pub const TEST_CASES: [&str; 2] = ["text_chat", "coffee_nosplit"];

impl QuantRecipe {
    pub fn options(&self) -> Result<crate::quant::QuantOptions> {
        let mut opts = crate::quant::QuantOptions::parse(self.bits, self.group)?;
        opts.parts = crate::quant::QuantParts::keeping_float(self.float)?;
        Ok(opts)
    }
}

//! A chat request run on the CPU model exactly as the GPU engine runs it: the same chat
//! template, image preprocessing and prompt ids, then greedy decoding. For a quantized model
//! this is the integer contract's CPU reference of a whole generation, what the GPU must match
//! (`cargo xtask caption --cpu`, the runtime's whole-model tests).

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use pocketvlm_format::compression::Latent;
use pocketvlm_format::{Manifest, dir};
use pocketvlm_processor::{Message, Preprocessor, Prompt as ChatPrompt, RgbImage};

use crate::Method;
use crate::budget::Budgets;
use crate::error::{CompressError, Result};
use crate::model::{CacheKind, CpuModel, Prompt, top_logits};
use crate::pipeline::{DenseOptions, LowRankOptions, Plan, compress};
use crate::quant::{QuantOptions, QuantParts};

/// A model directory on the CPU with its tokenizer and image preprocessor.
pub struct Reference {
    pub manifest: Manifest,
    pub model: CpuModel,
    pub chat: ChatPrompt,
    pub preprocessor: Preprocessor,
    /// The K/V cache greedy decoding keeps: [`CacheKind::Latent`] (the product's path) unless
    /// set otherwise.
    pub cache: CacheKind,
}

/// What a request computed.
pub struct ReferenceRun {
    pub prompt_ids: Vec<u32>,
    /// Logits at the last prompt position.
    pub prompt_logits: Vec<f32>,
    /// Greedy ids (stopping after an end-of-generation id, which is kept).
    pub generated_ids: Vec<u32>,
    /// For each generated id, the largest logits it was chosen from (see [`crate::model::Greedy::step_top`]).
    pub step_top: Vec<Vec<(u32, f32)>>,
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
        Ok(Self { manifest, model, chat, preprocessor, cache: CacheKind::Latent })
    }

    /// Render `messages` with the generation prompt, preprocess `image` (split by the checkpoint's
    /// default unless `split` says), encode, and decode greedily up to `max_new_tokens` with the
    /// [`Self::cache`] kind of K/V cache.
    pub fn run(
        &self,
        messages: &[Message],
        image: Option<&RgbImage>,
        split: Option<bool>,
        max_new_tokens: usize,
    ) -> Result<ReferenceRun> {
        let t0 = Instant::now();
        let prompt = self.prompt(messages, image, split)?;
        let preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let embeds = self.model.embed_prompt(&prompt, None)?;
        let vision_ms = t1.elapsed().as_secs_f64() * 1e3;
        let stop = &self.manifest.generation.eos_token_ids;
        let greedy = self.model.greedy_with_cache(&embeds, max_new_tokens, stop, self.cache)?;
        Ok(ReferenceRun {
            prompt_ids: prompt.ids,
            prompt_logits: greedy.prompt_logits,
            generated_ids: greedy.ids,
            step_top: greedy.step_top,
            preprocess_ms,
            vision_ms,
            prefill_ms: greedy.prefill_ms,
            decode_ms: greedy.decode_ms,
        })
    }

    /// The prompt of a request: `messages` rendered with the generation prompt, `image`
    /// preprocessed (split by the checkpoint's default unless `split` says), ids with the image
    /// tokens expanded.
    fn prompt(&self, messages: &[Message], image: Option<&RgbImage>, split: Option<bool>) -> Result<Prompt> {
        let rendered = self.chat.render(messages, true)?;
        let split = split.unwrap_or(self.preprocessor.default_split());
        let prepared = image.map(|i| self.preprocessor.preprocess(i, split)).transpose()?;
        let grids: Vec<_> = prepared.iter().map(|p| p.grid()).collect();
        let ids = self.chat.encode(&rendered, &grids)?;
        let pixels = prepared
            .map(|p| Tensor::from_vec(p.pixel_values, (p.n_tiles, 3, p.tile_size, p.tile_size), &Device::Cpu))
            .transpose()?;
        Ok(Prompt { ids, pixels })
    }

    /// The reference's own sensitivity to one rounding: the request run with teacher forcing
    /// along `ids` (e.g. its own greedy ids) after scaling the prompt embeddings by `1 + 2⁻²³`
    /// (each value moves by at most one unit in the last place), returning each step's largest
    /// logits. Compared with the unperturbed run's, this is the noise floor of any
    /// implementation whose float rounding differs from the reference's.
    pub fn perturbed_follow(
        &self,
        messages: &[Message],
        image: Option<&RgbImage>,
        split: Option<bool>,
        ids: &[u32],
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        let prompt = self.prompt(messages, image, split)?;
        let embeds = self.model.embed_prompt(&prompt, None)?.affine(1.0 + f64::from(f32::EPSILON), 0.0)?;
        Ok(self.model.teacher_forced(&embeds, ids, self.cache)?.step_top)
    }
}

impl Reference {
    /// A whole-model expectation in the shape of the fixtures' transformers cases
    /// (`tests/fixtures/*/expected/<case>.json`): `case` with `prompt_ids`, `top_logits` (the
    /// ten largest `[id, logit]` at the last prompt position) and `generated_ids` replaced by what
    /// this reference computes for the case's messages, image splitting and token limit, plus
    /// `step_top_logits` (for each generated id, the largest `[id, logit]` it was chosen from:
    /// what a teacher-forced comparison checks at every step, see `pocketvlm_runtime::parity`)
    /// and `"expected_by": "cpu-reference"`.
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
        let mut out = case.clone();
        out["prompt_ids"] = serde_json::json!(run.prompt_ids);
        out["top_logits"] = serde_json::json!(top_logits(&run.prompt_logits, 10));
        out["generated_ids"] = serde_json::json!(run.generated_ids);
        out["step_top_logits"] = serde_json::json!(run.step_top);
        out["expected_by"] = serde_json::json!("cpu-reference");
        Ok(out)
    }
}

/// A test model of the tiny fixture by name: an optional low-rank factorisation (plain `svd`,
/// which needs no calibration) and an optional low-bit recipe, as `cargo xtask compress
/// --recipe svd --qkv-params … --kv-cache … --ffn-params … [--latent kv] --bits …
/// [--group-size …] [--float …] [--widths …]` gives them.
#[derive(Clone, Copy, Debug)]
pub struct TestRecipe {
    /// A short name (a directory name).
    pub name: &'static str,
    /// Budgets of an `svd` factorisation; `None` converts densely.
    pub low_rank: Option<Budgets>,
    /// What the factorisation's text latent is shared by.
    pub latent: Latent,
    /// `w8a8`, `w4a8` or `w4a4`; empty for a float model.
    pub bits: &'static str,
    pub group: Option<usize>,
    /// Comma-separated parts kept float (`--float`).
    pub float: &'static str,
    /// Units' widths other than their defaults (`--widths`).
    pub widths: &'static str,
}

/// A dense quantized test recipe.
const fn dense(
    name: &'static str,
    bits: &'static str,
    group: Option<usize>,
    float: &'static str,
) -> TestRecipe {
    TestRecipe { name, low_rank: None, latent: Latent::Qkv, bits, group, float, widths: "" }
}

/// The quantized variants of the tiny fixture that the whole-model tests run on the GPU, natively
/// and in the browser, against this reference: every scheme, per-channel and grouped INT4
/// weights, float parts, and a model mixing widths (`--widths`): float, INT4 and INT8 decoder
/// sublayers, an INT4 embedding table and an INT4 `lm_head`.
pub const TEST_RECIPES: [TestRecipe; 6] = [
    dense("w8a8", "w8a8", None, ""),
    dense("w4a8", "w4a8", None, ""),
    dense("w4a8-g64", "w4a8", Some(64), ""),
    dense("w4a4", "w4a4", None, ""),
    dense("w8a8-float-vision-lm_head", "w8a8", None, "vision,lm_head"),
    TestRecipe {
        widths: "decoder.1.mlp=float,decoder.2.attention=float,decoder.0.mlp=int8,embeddings=int4,lm_head=int4",
        ..dense("w4a8-mixed-widths", "w4a8", None, "")
    },
];

/// Half the text decoder's QKV parameters (45 latent components over the fixture's 3 layers:
/// rank 15 each, below `2·d_kv = 32`, so every layer caches its latent), half its MLP
/// parameters (every MLP projection factored, ranks 17–18) and 60 % of the vision tower's QKV
/// parameters.
const QKV50_FFN50_VISION60: Budgets =
    Budgets { qkv_params: Some(0.5), kv_cache: None, ffn_params: Some(0.5), vision_qkv_params: Some(0.6) };

/// A quantized K/V cache of a quarter of dense f16 K and V bytes: 48 bytes per token of which
/// 12 are the three layers' scales, so 36 INT8 latent values (rank 12 each); the MLP stays dense.
const KV25: Budgets =
    Budgets { qkv_params: None, kv_cache: Some(0.25), ffn_params: None, vision_qkv_params: None };

/// Half the dense K/V values per token: 48 latent values over the fixture's 3 layers (rank 16
/// each, below `2·d_kv = 32`).
const KV50: Budgets =
    Budgets { qkv_params: None, kv_cache: Some(0.5), ffn_params: None, vision_qkv_params: None };

/// A low-rank test recipe (`svd`) with a joint-QKV latent.
const fn low_rank(name: &'static str, budgets: Budgets, bits: &'static str) -> TestRecipe {
    TestRecipe {
        name,
        low_rank: Some(budgets),
        latent: Latent::Qkv,
        bits,
        group: None,
        float: "",
        widths: "",
    }
}

/// A low-rank test recipe (`svd`) with a latent for K and V only (`--latent kv`).
const fn kv_latent(name: &'static str, budgets: Budgets, bits: &'static str) -> TestRecipe {
    TestRecipe { latent: Latent::Kv, ..low_rank(name, budgets, bits) }
}

/// Low-rank variants of the tiny fixture whose decoder caches its latents: joint QKV, float with
/// factored MLP and vision QKV, the same at W4A8, and INT8 latents at a quarter of dense K/V
/// bytes at W4A8 and W8A8; a latent for K and V only (Q dense), float at half the K/V values and
/// at a quarter of the bytes at W4A8. Built by [`TestRecipe::build`].
pub const LOW_RANK_TEST_RECIPES: [TestRecipe; 6] = [
    low_rank("svd-qkv50-ffn50-vision60", QKV50_FFN50_VISION60, ""),
    low_rank("svd-qkv50-ffn50-vision60-w4a8", QKV50_FFN50_VISION60, "w4a8"),
    low_rank("svd-kv25-w4a8", KV25, "w4a8"),
    low_rank("svd-kv25-w8a8", KV25, "w8a8"),
    kv_latent("svd-kvlatent50", KV50, ""),
    kv_latent("svd-kvlatent25-w4a8", KV25, "w4a8"),
];

/// The cases of the tiny fixture the quantized variants are checked on (one text, one image).
pub const TEST_CASES: [&str; 2] = ["text_chat", "coffee_nosplit"];

impl TestRecipe {
    /// The low-bit recipe; a typed error for a float recipe.
    pub fn options(&self) -> Result<QuantOptions> {
        self.quant_options()?.ok_or_else(|| CompressError::BadOptions {
            recipe: self.name.into(),
            what: "a low-bit recipe (it is float)".into(),
        })
    }

    /// The low-bit recipe, `None` for a float model.
    pub fn quant_options(&self) -> Result<Option<QuantOptions>> {
        if self.bits.is_empty() {
            return Ok(None);
        }
        let mut opts = QuantOptions::parse(self.bits, self.group)?;
        opts.parts = QuantParts::keeping_float(self.float)?;
        if !self.widths.is_empty() {
            opts = opts.with_widths(self.widths)?;
        }
        Ok(Some(opts))
    }

    /// Write this variant of the Hugging Face checkpoint `checkpoint` to the model directory `out`.
    pub fn build(&self, checkpoint: &Path, out: &Path) -> Result<Manifest> {
        let quant = self.quant_options()?;
        let plan = match self.low_rank {
            Some(budgets) => {
                let latent = self.latent;
                Plan::LowRank(LowRankOptions {
                    quant,
                    latent,
                    ..LowRankOptions::new(Method::Svd, budgets, None)
                })
            }
            None => Plan::Dense(DenseOptions { quant, ..Default::default() }),
        };
        Ok(compress(checkpoint, out, &plan)?.manifest)
    }
}

//! The dense model on the GPU against what Hugging Face transformers computed for the tiny
//! SmolVLM fixture and the fixtures with the 2.2B's and 500M's traits (the checks are in
//! `cases/mod.rs`, shared with the browser test `model_web.rs`): tiles, prompt ids, last-position
//! top-10 ids and logits, greedy ids.
#![cfg(not(target_arch = "wasm32"))]

mod cases;

use std::path::{Path, PathBuf};

use cases::{
    QUANT_LOGIT_TOLERANCE, SIZE_FIXTURES, TINY_CASES, case_request, check_case, check_case_within,
    check_stopped_anywhere, load, load_dir, read_case,
};
use pocketvlm_compress::model::CacheKind as CpuCache;
use pocketvlm_compress::model::reference::{LOW_RANK_TEST_RECIPES, Reference, TEST_CASES, TEST_RECIPES};
use pocketvlm_compress::quant::{QuantOptions, QuantParts};
use pocketvlm_compress::{DenseOptions, Plan, compress};
use pocketvlm_format::dir;
use pocketvlm_processor::decode_image;
use pocketvlm_runtime::engine::Engine;
use pocketvlm_runtime::model::sampling::SamplingOptions;
use pocketvlm_runtime::model::{CacheKind, DecodeProfiling, Generator, Stop, check_supported};
use pocketvlm_runtime::shader::{preprocess, source};
use pocketvlm_runtime::{DeviceOptions, Gpu, Pretend, RuntimeError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Every test case of `checkpoint` through `engine` (a compressed model of it) against the
/// integer contract's CPU reference of that model: prompt ids, top-10 ids, logits within
/// [`QUANT_LOGIT_TOLERANCE`] and greedy ids.
async fn check_reference_cases(engine: &Engine, reference: &Reference, checkpoint: &Path, what: &str) {
    let root = checkpoint.to_str().expect("a UTF-8 path");
    for name in TEST_CASES {
        let mut case = read_case(async |path: String| std::fs::read(&path).unwrap(), root, name).await;
        let image = case.image.as_ref().map(|b| decode_image(b).unwrap());
        case.expected = reference.expectation(&case.expected, image.as_ref()).unwrap();
        check_case_within(engine, &case, QUANT_LOGIT_TOLERANCE).await;
        eprintln!("{what} {name}: matches the CPU reference");
    }
}

async fn check_cases(engine: &Engine, checkpoint: &Path, names: &[&str]) {
    let root = checkpoint.to_str().expect("a UTF-8 path");
    for name in names {
        let case = read_case(async |path: String| std::fs::read(&path).unwrap(), root, name).await;
        check_case(engine, &case).await;
        eprintln!("{name}: matches transformers");
    }
}

#[test]
fn tiny_fixture_matches_transformers() {
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        let engine = load(&tiny, DeviceOptions::default()).await;
        check_cases(&engine, &tiny, &TINY_CASES).await;
    });
}

/// A caption and a text chat stopped at every point of their vision tower and prefill fail with
/// `Aborted` there, and the same engine then answers them as transformers does.
#[test]
fn stopped_anywhere_then_answers_as_transformers() {
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        let engine = load(&tiny, DeviceOptions::default()).await;
        let root = tiny.to_str().expect("a UTF-8 path");
        for name in ["coffee_nosplit", "text_chat"] {
            let case = read_case(async |path: String| std::fs::read(&path).unwrap(), root, name).await;
            check_stopped_anywhere(&engine, &case).await;
        }
    });
}

/// `tiny-2b`: 132-px tiles with patch 14 (9×9 patches, the last 6 pixel rows and columns unused,
/// as 384 px gives 27×27 in SmolVLM-Instruct), 9 image tokens per tile, multi-head attention.
#[test]
fn tiny_2b_fixture_matches_transformers() {
    pollster::block_on(async {
        let dir = fixtures().join(SIZE_FIXTURES[0]);
        let engine = load(&dir, DeviceOptions::default()).await;
        let v = &engine.model.config.vision;
        assert_eq!((v.image_size, v.patch_size, v.patches_per_side()), (132, 14, 9));
        assert_eq!(engine.model.config.image_seq_len(), 9);
        check_cases(&engine, &dir, &TINY_CASES).await;
    });
}

/// `tiny-500m`: 15 query heads over 5 key-value heads, pixel-shuffle scale 4, tied lm_head.
#[test]
fn tiny_500m_fixture_matches_transformers() {
    pollster::block_on(async {
        let dir = fixtures().join(SIZE_FIXTURES[1]);
        let engine = load(&dir, DeviceOptions::default()).await;
        let t = &engine.model.config.text;
        assert_eq!((t.num_attention_heads, t.num_key_value_heads, t.tie_word_embeddings), (15, 5, true));
        check_cases(&engine, &dir, &TINY_CASES).await;
    });
}

#[test]
fn split_bindings_give_the_same_tokens() {
    // 1 MiB bindings force chunked embedding gathers and lm_head (9.4 MB each in f32).
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        let engine =
            load(&tiny, DeviceOptions { max_storage_binding: Some(1 << 20), ..Default::default() }).await;
        check_cases(&engine, &tiny, &["text_chat", "coffee_nosplit"]).await;
    });
}

#[test]
fn prompt_too_long_is_a_typed_error() {
    pollster::block_on(async {
        let engine = load(&fixtures().join("tiny"), DeviceOptions::default()).await;
        let (gpu, model) = (&engine.gpu, &engine.model);
        // the context is the checkpoint's max_position_embeddings (transformers' config.json)
        let config = serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(fixtures().join("tiny/config.json")).unwrap(),
        )
        .unwrap();
        let context = config["text_config"]["max_position_embeddings"].as_u64().unwrap() as usize;
        let prompt = vec![1u32; context];
        let err = Generator::start(gpu, model, &prompt, None, 4, SamplingOptions::default(), &Stop::never())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, RuntimeError::PromptTooLong { .. }), "{err}");
        // a prompt that fits, asking for more new tokens than the context has left
        let prompt = vec![1u32; context - 4];
        for asked in [5, usize::MAX] {
            let err = Generator::start(
                gpu,
                model,
                &prompt,
                None,
                asked,
                SamplingOptions::default(),
                &Stop::never(),
            )
            .await
            .err()
            .unwrap();
            let RuntimeError::PromptTooLong { tokens, max_new_tokens, limit } = err else { panic!("{err}") };
            assert_eq!((tokens, max_new_tokens, limit), (context - 4, asked, context));
        }
        // The image-token count must match the features given.
        let prompt = vec![model.config.image_token_id; 3];
        let err = Generator::start(gpu, model, &prompt, None, 4, SamplingOptions::default(), &Stop::never())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    });
}

/// Every quantized model the compressor writes for the tiny fixture runs on the GPU with the
/// integer contract's CPU reference's prompt ids, top-10 ids, logits (within
/// [`QUANT_LOGIT_TOLERANCE`]) and greedy ids, for a text and an image case.
#[test]
fn quantized_tiny_models_match_the_cpu_reference() {
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        for recipe in TEST_RECIPES {
            let out = tempfile::tempdir().unwrap();
            let quant = Some(recipe.options().unwrap());
            compress(&tiny, out.path(), &Plan::Dense(DenseOptions { quant, ..Default::default() })).unwrap();
            let engine = load_dir(out.path(), &DeviceOptions::default()).await;
            let download: u64 = dir::read_manifest(out.path()).unwrap().tensors.iter().map(|t| t.bytes).sum();
            let weights = engine.model.weight_bytes();
            assert!(
                weights >= download && weights * 10 <= download * 11,
                "{}: {weights} B on the GPU for {download} B",
                recipe.name
            );
            check_reference_cases(&engine, &Reference::open(out.path()).unwrap(), &tiny, recipe.name).await;
        }
    });
}

/// The W4A8 models of the fixtures with the other sizes' traits run on the GPU with the CPU
/// reference's prompt ids, top-10 ids, logits and greedy ids (odd widths and head counts through
/// the rotations and integer kernels: vision head_dim 12 and 9×9 patches, 15 heads of 4;
/// `tiny-2b`'s connector input, 9·24 = 216 wide, is rotated online by a Hadamard core of order
/// 108 ⊗ H₂, as the 2.2B's 10368 = 648·16).
#[test]
fn quantized_size_fixtures_match_the_cpu_reference() {
    pollster::block_on(async {
        // tiny-500m ties lm_head to the embeddings: kept float while the embedding table is INT8,
        // the compressor writes lm_head as a matrix of its own (bf16) beside the INT8 table; an
        // INT4 table is also the tied lm_head's INT4 weights.
        let variants = SIZE_FIXTURES
            .iter()
            .map(|f| (*f, "w4a8", "", ""))
            .chain([("tiny-500m", "w8a8", "lm_head", ""), ("tiny-500m", "w8a8", "", "embeddings=int4")]);
        for (fixture, bits, float, widths) in variants {
            let dir = fixtures().join(fixture);
            let out = tempfile::tempdir().unwrap();
            let mut quant = QuantOptions::parse(bits, None).unwrap();
            quant.parts = QuantParts::keeping_float(float).unwrap();
            if !widths.is_empty() {
                quant = quant.with_widths(widths).unwrap();
            }
            compress(
                &dir,
                out.path(),
                &Plan::Dense(DenseOptions { quant: Some(quant), ..Default::default() }),
            )
            .unwrap();
            let engine = load_dir(out.path(), &DeviceOptions::default()).await;
            let reference = Reference::open(out.path()).unwrap();
            let name = format!("{fixture} {bits} (float: {float:?}, widths: {widths:?})");
            check_reference_cases(&engine, &reference, &dir, &name).await;
        }
    });
}

/// Every low-rank model of [`LOW_RANK_TEST_RECIPES`] (float and quantized joint-QKV latents below
/// `2·d_kv`, factored MLPs and vision QKV, INT8 latents at 25 % of K/V bytes) runs on the GPU with
/// the CPU reference's prompt ids, top-10 ids, logits (within [`QUANT_LOGIT_TOLERANCE`]) and
/// greedy ids, with the latent KV cache and with the plain one (each against the reference's same
/// cache kind); a quantized model's latent cache holds the manifest's `r + 4` bytes per token and
/// layer (exactly, when `4 | r`; else the INT8 row is padded to whole words), a float model's its
/// `2r` (bf16; an odd `r` pads to a whole word).
#[test]
fn low_rank_tiny_models_match_the_cpu_reference() {
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        for recipe in LOW_RANK_TEST_RECIPES {
            let out = tempfile::tempdir().unwrap();
            let manifest = recipe.build(&tiny, out.path()).unwrap();
            check_supported(&manifest).unwrap();
            let c = manifest.compression.as_ref().unwrap();
            assert!(c.text_layers.iter().all(|l| l.latent().is_some_and(|r| r < 32)), "{}", recipe.name);
            let mut reference = Reference::open(out.path()).unwrap();
            let mut engine = load_dir(out.path(), &DeviceOptions::default()).await;
            let kinds = [
                (CacheKind::Latent, CpuCache::Latent),
                (CacheKind::LatentKeys, CpuCache::Latent),
                (CacheKind::Plain, CpuCache::Plain),
            ];
            for (kind, cpu_kind) in kinds {
                engine.model.cache_kind = kind;
                reference.cache = cpu_kind;
                check_reference_cases(&engine, &reference, &tiny, &format!("{} {kind:?} cache", recipe.name))
                    .await;
            }
            if manifest.quantization.is_some() {
                // A key depends only on its own INT8 latent and position: the kept keys (one
                // rebuild per token, as it enters) are bit for bit the ones rebuilt every step.
                let mut logits = Vec::new();
                for kind in [CacheKind::Latent, CacheKind::LatentKeys, CacheKind::Plain] {
                    engine.model.cache_kind = kind;
                    logits.push(decode_logits(&engine, 10).await);
                }
                assert!(logits[0] == logits[1], "{}: kept keys changed the logits", recipe.name);
                // Decoding a step ahead runs the same passes in the same order: the same bits.
                let ahead = DeviceOptions { decode_ahead: Some(true), ..Default::default() };
                let mut ahead = load_dir(out.path(), &ahead).await;
                ahead.model.cache_kind = CacheKind::Latent;
                assert!(!engine.gpu.caps.decode_ahead && ahead.gpu.caps.decode_ahead);
                let (one, two) = (decode_logits(&ahead, 10).await, &logits[0]);
                assert!(one == *two, "{}: decoding a step ahead changed the logits", recipe.name);
                // The prefill rebuilds every token's values from its cached INT8 latent (the
                // contract's product, as the plain cache computes them) instead of absorbing
                // v_up: its logits are the plain cache's bit for bit; decode steps absorb.
                for latent in &logits[..2] {
                    let what = recipe.name;
                    assert!(
                        latent[0] == logits[2][0],
                        "{what}: the prefill's values differ from the plain cache's"
                    );
                }
            }
            {
                // Quantized: r INT8 values in whole groups of four words and the f32 scale per
                // layer, the manifest's r + 4 bytes, plus the padding of a rank that is not a
                // multiple of 16.
                // Float: r bf16 values in whole words, the manifest's 2r bytes (plus 2 for an odd r).
                let quantized = manifest.quantization.is_some();
                let padding: u64 = c
                    .text_layers
                    .iter()
                    .filter_map(|l| l.latent())
                    .map(|r| if quantized { r.next_multiple_of(16) - r } else { 2 * (r % 2) } as u64)
                    .sum();
                let want = c.kv_cache.bytes_per_token + padding;
                engine.model.cache_kind = CacheKind::Latent;
                let (gpu, model) = (&engine.gpu, &engine.model);
                assert_eq!(model.kv_bytes_per_token(), want, "{}", recipe.name);
                let generator = Generator::start(
                    gpu,
                    model,
                    &[1, 2, 3],
                    None,
                    2,
                    SamplingOptions::default(),
                    &Stop::never(),
                )
                .await
                .unwrap();
                assert_eq!(generator.kv_bytes_per_token(), want, "{}", recipe.name);
            }
        }
    });
}

/// A prepared caption compiles nothing and answers as the reference does: [`Engine::prepare`]
/// records the vision tower, prefill, decode step and argmax of a request like it without running
/// them, so every pipeline the caption uses is compiled before it, and nothing of those passes
/// reaches the generation (its tokens; the device holds no more memory after it). The dense
/// fixture (against transformers) and a W4A8 model with the INT8 latent cache (against the
/// integer contract's CPU reference), unsplit and split images.
#[test]
fn a_prepared_caption_compiles_nothing_and_answers_as_the_reference() {
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        let root = tiny.to_str().expect("a UTF-8 path");
        let recipe = LOW_RANK_TEST_RECIPES.iter().find(|r| r.name == "svd-kvlatent25-w4a8").unwrap();
        let out = tempfile::tempdir().unwrap();
        recipe.build(&tiny, out.path()).unwrap();
        let reference = Reference::open(out.path()).unwrap();
        for name in ["coffee_nosplit", "chelsea_split"] {
            let dense = load(&tiny, DeviceOptions::default()).await;
            let latent = load_dir(out.path(), &DeviceOptions::default()).await;
            let mut case = read_case(async |path: String| std::fs::read(&path).unwrap(), root, name).await;
            let held = dense.gpu.held_bytes();
            let prepared = dense.prepare(&case_request(&case)).await.unwrap();
            // It holds nothing after it (so the caption grows, and counts, what it would have).
            assert_eq!(dense.gpu.held_bytes(), held, "dense {name}: held after the prepare");
            let compiled = dense.gpu.pipelines.compiled();
            assert!(prepared.pipelines > 0 && prepared.pipelines == compiled.len(), "{name}: {prepared:?}");
            check_case(&dense, &case).await;
            assert_eq!(dense.gpu.pipelines.compiled(), compiled, "dense {name}: the caption compiled more");

            assert_eq!(latent.model.cache_kind, CacheKind::Latent);
            latent.prepare(&case_request(&case)).await.unwrap();
            let compiled = latent.gpu.pipelines.compiled();
            let image = case.image.as_ref().map(|b| decode_image(b).unwrap());
            case.expected = reference.expectation(&case.expected, image.as_ref()).unwrap();
            check_case_within(&latent, &case, QUANT_LOGIT_TOLERANCE).await;
            assert_eq!(
                latent.gpu.pipelines.compiled(),
                compiled,
                "{} {name}: the caption compiled more",
                recipe.name
            );
            eprintln!(
                "{name}: prepared ({} pipelines, {:.0} ms); the caption compiled nothing",
                prepared.pipelines, prepared.ms
            );
        }
    });
}

/// Decode steps after the first allocate no GPU memory, and from the third on record over the
/// same buffers and binding ranges as the step before (a cache, and the keys rebuilt from a
/// latent cache, are bound over their capacity, not the rows filled so far), so they build no
/// bind group: with a plain cache (the dense fixture, one step at a time and a step ahead, whose
/// steps alternate between two slots of logits) and with the INT8 latent cache of a low-rank W8A8
/// model.
#[test]
fn decode_steps_allocate_nothing_and_reuse_bind_groups() {
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        let dense = load(&tiny, DeviceOptions::default()).await;
        check_decode_reuse(&dense, "dense, plain cache").await;
        let ahead = load(&tiny, DeviceOptions { decode_ahead: Some(true), ..Default::default() }).await;
        check_decode_reuse(&ahead, "dense, plain cache, decoding a step ahead").await;
        let recipe = LOW_RANK_TEST_RECIPES.iter().find(|r| r.name == "svd-kv25-w8a8").unwrap();
        let out = tempfile::tempdir().unwrap();
        recipe.build(&tiny, out.path()).unwrap();
        let data = dir::open(out.path()).unwrap();
        let tokenizer = dir::read_tokenizer(out.path(), &data.manifest).unwrap();
        let gpu = Gpu::new(&DeviceOptions::default()).await.unwrap();
        let mut latent = Engine::load(gpu, &data, &tokenizer).await.unwrap();
        latent.model.cache_kind = CacheKind::Latent;
        check_decode_reuse(&latent, "svd-kv25-w8a8, INT8 latent cache").await;
        latent.model.cache_kind = CacheKind::LatentKeys;
        check_decode_reuse(&latent, "svd-kv25-w8a8, INT8 latent cache with kept keys").await;
    });
}

/// The logits of the prefill of a text prompt and of each of `steps` greedy decode steps.
async fn decode_logits(engine: &Engine, steps: usize) -> Vec<Vec<u32>> {
    let (gpu, model) = (&engine.gpu, &engine.model);
    let prompt = [1u32, 11126, 42, 1812, 7, 99];
    let mut generator =
        Generator::start(gpu, model, &prompt, None, steps, SamplingOptions::default(), &Stop::never())
            .await
            .unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
    let mut all = vec![bits(generator.logits(gpu, model).await.unwrap())];
    while let Some(token) = generator.next_token(gpu, model).await.unwrap() {
        // the logits the token was chosen from, not the step ahead's
        let logits = generator.logits(gpu, model).await.unwrap();
        let first_largest = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        assert_eq!(first_largest as u32, token, "step {}: the logits read are not the choice's", all.len());
        all.push(bits(logits));
    }
    all
}

async fn check_decode_reuse(engine: &Engine, what: &str) {
    let (gpu, model) = (&engine.gpu, &engine.model);
    let prompt = [1u32, 11126, 42, 1812];
    let steps = 12;
    let mut generator =
        Generator::start(gpu, model, &prompt, None, steps, SamplingOptions::default(), &Stop::never())
            .await
            .unwrap();
    generator.profile_decode(DecodeProfiling::Host);
    // The first two steps (a step ahead records each one call sooner); the profiled ones follow.
    while generator.decode_recording().steps < 2 {
        generator.next_token(gpu, model).await.unwrap();
    }
    let first = generator.decode_recording();
    gpu.reset_peak_held_bytes();
    let before = gpu.held_bytes();
    while generator.next_token(gpu, model).await.unwrap().is_some() {}
    assert_eq!(gpu.peak_held_bytes(), before, "{what}: decode steps allocated storage");
    let all = generator.decode_recording();
    let later = all.dispatches - first.dispatches;
    let reused = all.reused_bind_groups - first.reused_bind_groups;
    eprintln!("{what}: {reused} dispatches of later steps reused a bind group, {later} in their passes");
    assert_eq!(all.steps, steps - 1, "{what}");
    assert!(later > 0, "{what}");
    assert_eq!(all.later_built_bind_groups, 0, "{what}: later decode steps built bind groups");
    assert!(reused >= later, "{what}: {reused} of {later} dispatches reused a bind group");
    // The recording profile covers exactly these steps: their dispatches by label, one tail each.
    let kinds = &generator.decode_profile().kinds;
    let profiled: usize =
        kinds.iter().filter(|(k, _)| !["copy", "(tail)"].contains(&k.as_str())).map(|(_, c)| c.count).sum();
    assert_eq!(profiled, later, "{what}: dispatches in the recording profile {kinds:?}");
    assert_eq!(kinds.get("(tail)").map(|c| c.count), Some(all.steps - first.steps), "{what}");
    assert!(kinds.values().all(|c| c.ms >= 0.0), "{what}");
}

/// Timing the decode steps' dispatches on the GPU (one compute pass each, timestamps around
/// them) changes no token, and times every dispatch of the timed steps (their argmax included).
#[test]
fn timed_decode_steps_generate_the_same_tokens() {
    pollster::block_on(async {
        let engine = load(&fixtures().join("tiny"), DeviceOptions::default()).await;
        let (gpu, model) = (&engine.gpu, &engine.model);
        let prompt = [1u32, 11126, 42, 1812];
        let steps = 8;
        let generate = |timed: bool| async move {
            let mut generator = Generator::start(
                gpu,
                model,
                &prompt,
                None,
                steps,
                SamplingOptions::default(),
                &Stop::never(),
            )
            .await
            .unwrap();
            generator.profile_decode(if timed { DecodeProfiling::HostAndGpu } else { DecodeProfiling::Off });
            let mut ids = Vec::new();
            while let Some(id) = generator.next_token(gpu, model).await.unwrap() {
                ids.push(id);
            }
            (ids, generator)
        };
        let (plain, _) = generate(false).await;
        let (timed, generator) = generate(true).await;
        assert_eq!(timed, plain, "timing the GPU changed the tokens");
        let kinds = &generator.decode_gpu_time().kinds;
        if !gpu.caps.timestamps {
            assert!(kinds.is_empty(), "{kinds:?}");
            return;
        }
        eprintln!("GPU time of the timed steps by kind: {kinds:?}");
        let recording = generator.decode_recording();
        let later_steps = recording.steps - 2;
        let timed_dispatches: usize =
            kinds.iter().filter(|(k, _)| !k.starts_with('(')).map(|(_, c)| c.count).sum();
        let per_step = recording.dispatches / recording.steps;
        assert_eq!(timed_dispatches, later_steps * (per_step + 1), "{kinds:?}");
        assert_eq!(kinds.get("argmax").map(|c| c.count), Some(later_steps), "{kinds:?}");
        assert!(kinds.values().all(|c| c.ms >= 0.0) && kinds.values().any(|c| c.ms > 0.0), "{kinds:?}");
    });
}

/// A decode step reads the text decoder's layers, final norm and head — matrices as stored,
/// vectors widened to f32 —, not the embedding table (unless the head is the table, tied) nor
/// the vision tower: [`Model::step_weight_bytes`] against the manifest's tensors.
#[test]
fn a_decode_step_reads_the_text_decoders_weights() {
    pollster::block_on(async {
        for (fixture, tied) in [("tiny", false), ("tiny-500m", true)] {
            let engine = load(&fixtures().join(fixture), DeviceOptions::default()).await;
            assert_eq!(engine.model.config.text.tie_word_embeddings, tied, "{fixture}");
            let out = tempfile::tempdir().unwrap();
            compress(&fixtures().join(fixture), out.path(), &Plan::Dense(DenseOptions::default())).unwrap();
            let manifest = dir::open(out.path()).unwrap().manifest;
            let head = if tied { "model.text_model.embed_tokens.weight" } else { "lm_head.weight" };
            let step_reads = |name: &str| {
                name.starts_with("model.text_model.layers.")
                    || name == "model.text_model.norm.weight"
                    || name == head
            };
            let want: u64 = manifest
                .tensors
                .iter()
                .filter(|t| step_reads(&t.name))
                .map(|t| if t.shape.len() == 1 { 4 * t.numel() as u64 } else { t.bytes })
                .sum();
            assert_eq!(engine.model.step_weight_bytes(), want, "{fixture}");
        }
    });
}

#[test]
fn memory_accounting_adds_up() {
    pollster::block_on(async {
        let engine = load(&fixtures().join("tiny"), DeviceOptions::default()).await;
        let (gpu, model) = (&engine.gpu, &engine.model);
        let cfg = model.config.clone();
        // Weights: matrices as stored (bf16 here), vectors widened to f32: within 10 % of the
        // download.
        let data = {
            let out = tempfile::tempdir().unwrap();
            compress(&fixtures().join("tiny"), out.path(), &Plan::Dense(DenseOptions::default())).unwrap();
            dir::open(out.path()).unwrap()
        };
        let download: u64 = data.manifest.tensors.iter().map(|t| t.bytes).sum();
        let weights = model.weight_bytes();
        assert!(
            weights >= download && weights * 10 <= download * 11,
            "{weights} B on the GPU for {download} B"
        );
        let prompt = [1u32, 11126, 42, 1812];
        let mut generator =
            Generator::start(gpu, model, &prompt, None, 3, SamplingOptions::default(), &Stop::never())
                .await
                .unwrap();
        while generator.next_token(gpu, model).await.unwrap().is_some() {}
        let memory = generator.memory(model);
        // f32 keys and values for every layer and position.
        let kv_width = cfg.text.num_key_value_heads * cfg.text.head_dim;
        let kv = 2 * cfg.text.num_hidden_layers * (prompt.len() + 3) * kv_width * 4;
        assert_eq!(memory.kv_cache, kv as u64);
        assert_eq!(memory.weights, model.weight_bytes());
        // At least the logits and the prefill's residual stream and MLP activations.
        let floor = (cfg.text.vocab_size
            + prompt.len() * (cfg.text.hidden_size + 3 * cfg.text.intermediate_size))
            * 4;
        assert!(memory.activations >= floor as u64, "{} < {floor}", memory.activations);
        assert!(memory.activations < model.weight_bytes(), "{memory:?}");
        assert_eq!(memory.total(), memory.weights + memory.tables + memory.kv_cache + memory.activations);
    });
}

/// Kernel scratch that a pass grows stays held, and counted, until the pass is submitted (its
/// bind groups still read the smaller buffer): the encoder holds both while recording, the device
/// keeps only the larger for later passes, which then hold nothing more.
#[test]
fn grown_kernel_scratch_is_held_until_its_pass_is_submitted() {
    pollster::block_on(async {
        let gpu = Gpu::new(&DeviceOptions::default()).await.unwrap();
        let before = gpu.held_bytes();
        let start = gpu.start_pass();
        let mut enc = gpu.encoder();
        for bytes in [1024, 4096] {
            enc.kernel_scratch(&gpu, "test scratch", bytes).await.unwrap();
        }
        assert_eq!(gpu.held_bytes() - before, 1024 + 4096, "both held while the pass records");
        assert_eq!(gpu.pass_bytes(start), 1024 + 4096);
        gpu.submit(enc);
        assert_eq!(gpu.held_bytes() - before, 4096, "the device keeps the larger one");
        let start = gpu.start_pass();
        let mut enc = gpu.encoder();
        let reused = enc.kernel_scratch(&gpu, "test scratch", 2048).await.unwrap();
        assert_eq!((reused.size(), gpu.pass_bytes(start)), (4096, 0));
        gpu.submit(enc);
    });
}

/// A memory budget (`DeviceOptions::memory_budget`, the npm package's `memoryBudget`) holds what
/// the device holds: a model whose weights exceed it fails to load with `OutOfMemory` and a
/// smaller model (W4A8) then loads and answers under the same budget; a generation that needs
/// more than is left fails with `OutOfMemory`, and the same engine then answers the cases that
/// fit as transformers does — every buffer of the failed pass given back, the kernel scratch it
/// grew included.
#[test]
fn a_memory_budget_gives_a_typed_error_and_the_engine_stays_usable() {
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        let root = tiny.to_str().unwrap();
        let read = async |path: String| std::fs::read(&path).unwrap();
        let (text, image) =
            (read_case(read, root, "text_chat").await, read_case(read, root, "coffee_nosplit").await);
        // Unlimited: what the dense model holds once loaded and at most while answering each case.
        let engine = load(&tiny, DeviceOptions::default()).await;
        let loaded = engine.gpu.held_bytes();
        let mut peaks = Vec::new();
        for case in [&text, &image, &text] {
            engine.gpu.reset_peak_held_bytes();
            check_case(&engine, case).await;
            peaks.push((engine.gpu.peak_held_bytes(), engine.gpu.held_bytes()));
        }
        let (text_peak, image_peak) = (peaks[0].0, peaks[1].0);
        eprintln!("held: {loaded} B loaded, peaks {peaks:?}");
        assert!(loaded < text_peak && text_peak < image_peak, "{loaded} {peaks:?}");
        // Kernel scratch is kept at its largest size; nothing else outlives an answer.
        assert_eq!(peaks[2].1, peaks[1].1, "a text answer after the image keeps nothing more");

        // Below the weights: the load is refused; a W4A8 model of the same checkpoint fits.
        let tight = DeviceOptions { memory_budget: Some(loaded - 1), ..Default::default() };
        let out = tempfile::tempdir().unwrap();
        compress(&tiny, out.path(), &Plan::Dense(DenseOptions::default())).unwrap();
        let data = dir::open(out.path()).unwrap();
        let tokenizer = dir::read_tokenizer(out.path(), &data.manifest).unwrap();
        let refused = Engine::load(Gpu::new(&tight).await.unwrap(), &data, &tokenizer).await;
        assert!(matches!(refused, Err(RuntimeError::OutOfMemory(_))), "{:?}", refused.err());
        let small = tempfile::tempdir().unwrap();
        let quant = Some(QuantOptions::parse("w4a8", None).unwrap());
        compress(&tiny, small.path(), &Plan::Dense(DenseOptions { quant, ..Default::default() })).unwrap();
        let engine = load_dir(small.path(), &tight).await;
        check_reference_cases(
            &engine,
            &Reference::open(small.path()).unwrap(),
            &tiny,
            "w4a8 under the budget",
        )
        .await;

        // Enough for the text case, not the image: the image fails, the text still answers.
        let engine =
            load(&tiny, DeviceOptions { memory_budget: Some(text_peak), ..Default::default() }).await;
        check_case(&engine, &text).await;
        let held = engine.gpu.held_bytes();
        let failed = engine.start(case_request(&image)).await.err();
        assert!(matches!(failed, Some(RuntimeError::OutOfMemory(_))), "{failed:?}");
        assert!(engine.gpu.held_bytes() <= held, "the failed pass gave back what it took");
        check_case(&engine, &text).await;
    });
}

/// The SmolVLM-256M-shaped checkpoint with the real SmolLM2-135M-Instruct text weights, generated
/// by `python3 tests/fixtures/generate.py --big <dir>` (not committed: 500 MB). Run with
/// `POCKETVLM_256M=<dir> cargo test --release -p pocketvlm-runtime --test model -- --ignored`.
#[test]
#[ignore = "needs the locally generated 256M-shaped checkpoint (POCKETVLM_256M)"]
fn smolvlm_256m_shape_with_real_text_weights_matches_transformers() {
    big_shape_matches_transformers("POCKETVLM_256M");
}

/// The SmolVLM-500M shape (15 query heads over 5 key-value heads, 960 wide), random weights,
/// generated by `python3 tests/fixtures/generate.py --big <dir> --shape 500m` (1 GB). Run with
/// `POCKETVLM_500M=<dir> cargo test --release -p pocketvlm-runtime --test model -- --ignored`.
#[test]
#[ignore = "needs the locally generated 500M-shaped checkpoint (POCKETVLM_500M)"]
fn smolvlm_500m_shape_matches_transformers() {
    big_shape_matches_transformers("POCKETVLM_500M");
}

/// The SmolVLM-Instruct (2.2B) shape (384-px tiles with patch 14: 27×27 patches, 81 tokens per
/// tile; 32 heads, 32 key-value heads), random weights, generated by `generate.py --big <dir>
/// --shape 2b` (4.5 GB). Run with `POCKETVLM_2B=<dir>` as above.
#[test]
#[ignore = "needs the locally generated 2.2B-shaped checkpoint (POCKETVLM_2B)"]
fn smolvlm_2b_shape_matches_transformers() {
    big_shape_matches_transformers("POCKETVLM_2B");
}

/// The `--big` checkpoint named by the environment variable `var` against its expectations.
fn big_shape_matches_transformers(var: &str) {
    let dir = PathBuf::from(std::env::var(var).unwrap_or_else(|_| panic!("{var}=<checkpoint dir>")));
    pollster::block_on(async {
        let engine = load(&dir, DeviceOptions::default()).await;
        check_cases(&engine, &dir, &["text_chat", "chelsea_split"]).await;
    });
}

/// The kernel variants of the adapters CI does not have — a GPU in a browser with and without
/// `shader-f16` (tiled, workgroup-reduction kernels) and a CPU adapter without it (SwiftShader's
/// choice, run here through Vulkan) — run on this machine with WebGPU's default limits
/// ([`Pretend`]): the dense model answers as transformers, a quantized and a latent-cache model
/// as the integer contract's CPU reference. Then every pipeline they compiled is checked with
/// naga against those limits, which wgpu only checks against this device's larger ones.
#[test]
fn other_adapters_kernels_match_and_fit_webgpu_limits() {
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        let recipes = [TEST_RECIPES[1], LOW_RANK_TEST_RECIPES[2]];
        let built: Vec<(String, tempfile::TempDir)> = recipes
            .iter()
            .map(|recipe| {
                let out = tempfile::tempdir().unwrap();
                recipe.build(&tiny, out.path()).unwrap();
                (recipe.name.to_string(), out)
            })
            .collect();
        let profiles = [
            ("GPU with shader-f16 and subgroups", Pretend { cpu: false, shader_f16: true, subgroups: true }),
            (
                "GPU without shader-f16 or subgroups",
                Pretend { cpu: false, shader_f16: false, subgroups: false },
            ),
            (
                "CPU adapter without shader-f16 or subgroups",
                Pretend { cpu: true, shader_f16: false, subgroups: false },
            ),
        ];
        for (profile, pretend) in profiles {
            let options = DeviceOptions { pretend: Some(pretend), ..Default::default() };
            let engine = load(&tiny, options.clone()).await;
            check_cases(&engine, &tiny, &TEST_CASES).await;
            check_webgpu_limits(&engine.gpu, profile);
            for (name, dir) in &built {
                let engine = load_dir(dir.path(), &options).await;
                let reference = Reference::open(dir.path()).unwrap();
                check_reference_cases(&engine, &reference, &tiny, &format!("{profile}: {name}")).await;
                check_webgpu_limits(&engine.gpu, profile);
            }
        }
    });
}

/// Every pipeline compiled on `gpu` parses and validates with naga and stays within WebGPU's
/// default limits: workgroup memory, invocations per workgroup, storage buffers per stage.
fn check_webgpu_limits(gpu: &Gpu, profile: &str) {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let limits = wgpu::Limits::defaults();
    let compiled = gpu.pipelines.compiled();
    assert!(!compiled.is_empty(), "{profile}: nothing was compiled");
    let (count, mut largest) = (compiled.len(), (0, ""));
    for (shader, defines) in compiled {
        let what = format!("{profile}: {shader} {defines:?}");
        let text = preprocess(shader, source(shader).unwrap(), &defines).unwrap();
        let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
        Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let globals = || module.global_variables.iter().map(|(_, g)| g);
        let workgroup_bytes: u32 =
            globals().filter(|g| g.space == naga::AddressSpace::WorkGroup).map(|g| layouter[g.ty].size).sum();
        let storage_buffers =
            globals().filter(|g| matches!(g.space, naga::AddressSpace::Storage { .. })).count() as u32;
        let main = module
            .entry_points
            .iter()
            .find(|e| e.name == "main")
            .unwrap_or_else(|| panic!("{what}: no main"));
        let invocations: u32 = main.workgroup_size.iter().product();
        assert!(
            workgroup_bytes <= limits.max_compute_workgroup_storage_size,
            "{what}: {workgroup_bytes} bytes of workgroup memory"
        );
        assert!(
            invocations <= limits.max_compute_invocations_per_workgroup,
            "{what}: {invocations} invocations"
        );
        assert!(
            storage_buffers <= limits.max_storage_buffers_per_shader_stage,
            "{what}: {storage_buffers} storage buffers"
        );
        largest = largest.max((workgroup_bytes, shader));
    }
    eprintln!("{profile}: {count} pipelines within WebGPU's limits; most workgroup memory: {largest:?}");
}

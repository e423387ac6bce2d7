//! Conversations that continue from the KV cache of earlier turns give the ids transformers
//! computes for the whole conversation from scratch (tests/fixtures/tiny/expected), and with a
//! latent KV cache the ids the same model computes from scratch.
#![cfg(not(target_arch = "wasm32"))]

mod cases;

use std::path::{Path, PathBuf};

use cases::{check_resumed_conversation, check_resumed_logits, ids, load, load_dir, request_for};
use pocketvlm_compress::model::reference::LOW_RANK_TEST_RECIPES;
use pocketvlm_processor::{RgbImage, decode_image};
use pocketvlm_runtime::DeviceOptions;
use pocketvlm_runtime::engine::{Conversation, Engine, Request, Session};
use pocketvlm_runtime::kernels::attention::{GROUPED_FROM_KEYS, SPLIT_KEYS_BELOW};
use pocketvlm_runtime::model::sampling::{SamplingOptions, top_k};
use pocketvlm_runtime::model::text::rebuilds_values;
use pocketvlm_runtime::model::{CacheKind, Generator, Stop};
use pocketvlm_runtime::shader::Defines;
use serde_json::Value;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

fn expected(case: &str) -> Value {
    let path = tiny().join(format!("expected/{case}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn engine() -> Engine {
    load(&tiny(), DeviceOptions::default()).await
}

/// The fixture case as a request (its messages, image, split and token budget).
fn request(exp: &Value) -> Request {
    let image: Option<RgbImage> = exp["image"]
        .as_str()
        .map(|rel| decode_image(&std::fs::read(tiny().join("expected").join(rel)).unwrap()).unwrap());
    request_for(exp, image)
}

async fn run_to_end(engine: &Engine, session: &mut Session) -> String {
    let mut text = String::new();
    while let Some(piece) = session.next(engine).await.unwrap() {
        text.push_str(&piece.text);
    }
    text
}

/// Continue `previous` with the fixture case and check prompt, first logits and greedy ids
/// against transformers; returns the conversation and how many prompt tokens were reused.
async fn check_resumed(engine: &Engine, case: &str, previous: Option<Conversation>) -> (Conversation, usize) {
    let exp = expected(case);
    let mut session = engine.resume(request(&exp), previous).await.unwrap();
    assert_eq!(session.prompt_ids, ids(&exp["prompt_ids"]), "{case}: prompt ids");
    let top: Vec<u32> = top_k(&session.prompt_logits, 5).iter().map(|p| p.0).collect();
    let want: Vec<u32> =
        exp["step_top5"][0].as_array().unwrap().iter().map(|p| p[0].as_u64().unwrap() as u32).collect();
    assert_eq!(top, want, "{case}: top-5 ids at the last prompt position");
    let text = run_to_end(engine, &mut session).await;
    assert_eq!(session.generated(), ids(&exp["generated_ids"]).as_slice(), "{case}: greedy ids");
    assert_eq!(text, exp["generated_text_skip_special"].as_str().unwrap(), "{case}: streamed text");
    let reused = session.reused_tokens();
    (session.into_conversation(), reused)
}

#[test]
fn a_second_turn_reuses_the_first_turns_cache() {
    pollster::block_on(async {
        let engine = engine().await;
        let exp = expected("text_multiturn");
        let full = request(&exp);

        // Turn one: the first user message, interrupted after three tokens (the cache is sized for
        // those, so the second turn has to grow it).
        let mut first = full.clone();
        first.messages.truncate(1);
        first.max_new_tokens = 3;
        let mut session = engine.start(first).await.unwrap();
        let first_prompt = session.prompt_ids.clone();
        assert!(session.next(&engine).await.unwrap().is_some());
        assert!(session.next(&engine).await.unwrap().is_some());
        let conversation = session.into_conversation();
        // the first token fed; on a GPU the second too, by the greedy step ahead of the third
        let fed = if engine.gpu.caps.decode_ahead { 2 } else { 1 };
        assert_eq!(conversation.cached_tokens().len(), first_prompt.len() + fed);

        // Turn two: the whole conversation (with an assistant reply the model did not write).
        let (conversation, reused) = check_resumed(&engine, "text_multiturn", Some(conversation)).await;
        let full_prompt = ids(&exp["prompt_ids"]);
        assert!(full_prompt.starts_with(&first_prompt));
        assert!(reused >= first_prompt.len() && reused < full_prompt.len(), "reused {reused}");

        // The same conversation again: everything but the last prompt token comes from the cache.
        let (_, reused) = check_resumed(&engine, "text_multiturn", Some(conversation)).await;
        assert_eq!(reused, full_prompt.len() - 1);
    });
}

#[test]
fn image_turns_reuse_the_cache_only_for_the_same_image() {
    pollster::block_on(async {
        let engine = engine().await;
        // A text conversation, then an image question: the image is computed in the new part.
        let (conversation, _) = check_resumed(&engine, "text_chat", None).await;
        let (conversation, reused) = check_resumed(&engine, "coffee_nosplit", Some(conversation)).await;
        let image_at = ids(&expected("coffee_nosplit")["prompt_ids"])
            .iter()
            .position(|&id| id == engine.model.config.image_token_id)
            .unwrap();
        assert!(reused < image_at, "reused {reused}");

        // The same image and question: the image tokens come from the cache.
        let (conversation, reused) = check_resumed(&engine, "coffee_nosplit", Some(conversation)).await;
        assert_eq!(reused, ids(&expected("coffee_nosplit")["prompt_ids"]).len() - 1);

        // The same prompt ids with another image behind them: the image tokens are recomputed
        // (with chelsea's features the greedy ids would differ from coffee's).
        let mut other = request(&expected("coffee_nosplit"));
        let chelsea = expected("chelsea_split")["image"].as_str().unwrap().to_string();
        other.image =
            Some(decode_image(&std::fs::read(tiny().join("expected").join(chelsea)).unwrap()).unwrap());
        other.max_new_tokens = 2;
        let mut session = engine.resume(other, Some(conversation)).await.unwrap();
        assert_eq!(session.prompt_ids, ids(&expected("coffee_nosplit")["prompt_ids"]));
        assert_eq!(session.reused_tokens(), image_at);
        run_to_end(&engine, &mut session).await;
        let (_, reused) = check_resumed(&engine, "coffee_nosplit", Some(session.into_conversation())).await;
        assert_eq!(reused, image_at);
    });
}

/// The low-rank W4A8 model caching INT8 latents (`svd-kv25-w4a8`), built into `out` and loaded.
async fn latent_engine(out: &Path) -> Engine {
    let recipe = LOW_RANK_TEST_RECIPES.iter().find(|r| r.name == "svd-kv25-w4a8").unwrap();
    recipe.build(&tiny(), out).unwrap();
    let engine = load_dir(out, &DeviceOptions::default()).await;
    assert_eq!(engine.model.cache_kind, CacheKind::Latent);
    engine
}

/// The fixture's two-turn conversation with its question at `message` (0: the first, 2: the
/// second) asked eight times over.
fn long_question(message: usize) -> Value {
    let mut long = expected("text_multiturn");
    let question = &mut long["messages"][message]["content"][0]["text"];
    *question = Value::from(question.as_str().unwrap().repeat(8));
    long
}

/// The pipelines `engine` has compiled that are not in `before`.
fn compiled_since(engine: &Engine, before: &[(&'static str, Defines)]) -> Vec<(&'static str, Defines)> {
    engine.gpu.pipelines.compiled().into_iter().filter(|p| !before.contains(p)).collect()
}

/// A low-rank W4A8 model caching INT8 latents (`svd-kv25-w4a8`): a conversation continued from
/// its latent cache — and from the latent with kept keys, which a grown cache carries over too —
/// gives what a fresh start gives ([`check_resumed_conversation`]; in the browser too,
/// `model_web.rs`): the second turn's pass rebuilds the values of every cached token from the
/// latents the first turn cached (`model::text::rebuilds_values`), with many new tokens against
/// the context and, the first question asked at length, with few.
#[test]
fn latent_cache_conversations_match_a_fresh_start() {
    pollster::block_on(async {
        let out = tempfile::tempdir().unwrap();
        let mut engine = latent_engine(out.path()).await;
        let long = long_question(0);
        for kind in [CacheKind::Latent, CacheKind::LatentKeys] {
            engine.model.cache_kind = kind;
            check_resumed_conversation(&engine, request(&expected("text_multiturn"))).await;
            check_resumed_conversation(&engine, request(&long)).await;
        }
    });
}

/// Prepare the first turn of `conversation`, run it and assert that it compiled nothing more;
/// resume it with the second turn, whose new tokens `new_tokens` must accept (given the count),
/// and assert that it compiled nothing either and answers as a fresh start does.
async fn check_prepared_follow_up(engine: &Engine, conversation: &Value, new_tokens: impl Fn(usize) -> bool) {
    let full = request(conversation);
    let mut first = full.clone();
    first.messages.truncate(1);

    engine.prepare(&first).await.unwrap();
    let compiled = engine.gpu.pipelines.compiled();
    let mut session = engine.start(first).await.unwrap();
    run_to_end(engine, &mut session).await;
    assert_eq!(engine.gpu.pipelines.compiled(), compiled, "the prepared first turn compiled more");

    let mut resumed = engine.resume(full.clone(), Some(session.into_conversation())).await.unwrap();
    let (cached, new) = (resumed.reused_tokens(), resumed.prompt_ids.len() - resumed.reused_tokens());
    assert!(new_tokens(new), "{new} new tokens after {cached}");
    run_to_end(engine, &mut resumed).await;
    let added = compiled_since(engine, &compiled);
    assert!(added.is_empty(), "the follow-up compiled {added:?}");

    let mut fresh = engine.start(full).await.unwrap();
    run_to_end(engine, &mut fresh).await;
    assert_eq!(resumed.generated(), fresh.generated(), "the follow-up's greedy ids");
}

/// A short follow-up compiles nothing that its engine's prepared first turn did not: with the
/// first question asked at length, the second turn brings fewer new tokens than
/// `SPLIT_KEYS_BELOW` against the INT8 latent cache and rebuilds its values
/// (`model::text::rebuilds_values`), so its attention reads per-head values for few queries, which
/// neither the first turn's prefill (many queries) nor its decode steps (latent values) do;
/// [`Engine::prepare`] records such a follow-up too. The second turn still answers as a fresh
/// start does.
#[test]
fn a_prepared_conversations_short_follow_up_compiles_nothing() {
    pollster::block_on(async {
        let out = tempfile::tempdir().unwrap();
        let engine = latent_engine(out.path()).await;
        let short = |new| rebuilds_values(new) && new < SPLIT_KEYS_BELOW;
        check_prepared_follow_up(&engine, &long_question(0), short).await;
    });
}

/// A long follow-up to a short text question compiles nothing that its engine's prepared first
/// turn did not: the first turn's prompt has fewer than `SPLIT_KEYS_BELOW` tokens, so its
/// prefill takes the kernels for few queries, and the second turn (its question asked at length)
/// brings at least that many new tokens, which take those of a long prefill; [`Engine::prepare`]
/// records such a follow-up after a short prompt. The second turn still answers as a fresh start
/// does.
#[test]
fn a_prepared_text_questions_long_follow_up_compiles_nothing() {
    pollster::block_on(async {
        let out = tempfile::tempdir().unwrap();
        let engine = latent_engine(out.path()).await;
        check_prepared_follow_up(&engine, &long_question(2), |new| new >= SPLIT_KEYS_BELOW).await;
    });
}

/// A prepared question whose cache can reach `GROUPED_FROM_KEYS` keys (its prompt and
/// `max_new_tokens` together) compiles nothing of its own: [`Engine::prepare`] records its passes
/// over a cache of its capacity, so the per-query attention's form for long contexts (a set of
/// query heads per invocation, which its decode takes from that many keys on) is compiled
/// before it, as the short form is.
#[test]
fn a_prepared_long_generation_compiles_nothing() {
    pollster::block_on(async {
        let out = tempfile::tempdir().unwrap();
        let engine = latent_engine(out.path()).await;
        let mut request = request(&expected("text_multiturn"));
        request.messages.truncate(1);
        request.max_new_tokens = GROUPED_FROM_KEYS;

        engine.prepare(&request).await.unwrap();
        let compiled = engine.gpu.pipelines.compiled();
        let grouped = compiled.iter().any(|(shader, d)| *shader == "attention" && d.contains_key("HEAD_SET"));
        assert!(grouped, "the long-context form was not prepared: {compiled:?}");
        let mut session = engine.start(request).await.unwrap();
        run_to_end(&engine, &mut session).await;
        let added = compiled_since(&engine, &compiled);
        assert!(added.is_empty(), "the generation compiled {added:?}");
    });
}

/// A turn that ended on an end-of-utterance token is continued from its cache as a fresh start
/// would answer (prompt logits within the tolerance of a prefill against decode steps, the same
/// greedy ids), decoding one step at a time and a step ahead
/// ([`pocketvlm_runtime::Capabilities::decode_ahead`]). A step ahead has already fed the end
/// token: the cache holds its row, `cached_tokens` lists it and the follow-up reuses it; one
/// step at a time leaves it for the follow-up's prefill.
#[test]
fn a_turn_ended_by_an_end_token_is_continued_from_its_cache() {
    pollster::block_on(async {
        for ahead in [false, true] {
            let options = DeviceOptions { decode_ahead: Some(ahead), ..Default::default() };
            let mut engine = load(&tiny(), options).await;
            let prompt = ids(&expected("text_multiturn")["prompt_ids"]);
            let (greedy, never) = (SamplingOptions::default, Stop::never());
            let generate = async |engine: &Engine, prompt: &[u32], max_new| {
                let (gpu, model) = (&engine.gpu, &engine.model);
                let mut generator =
                    Generator::start(gpu, model, prompt, None, max_new, greedy(), &never).await.unwrap();
                while generator.next_token(gpu, model).await.unwrap().is_some() {}
                generator
            };
            let plain = generate(&engine, &prompt, 8).await;
            // The third greedy id taken as an end-of-utterance token.
            let end = plain.generated()[2];
            let ended_at = plain.generated().iter().position(|&t| t == end).unwrap();
            engine.model.eos_token_ids = vec![end];
            let first = generate(&engine, &prompt, 8).await;
            assert_eq!(first.generated(), &plain.generated()[..=ended_at]);
            let turn_one: Vec<u32> = prompt.iter().chain(first.generated()).copied().collect();
            let fed = if ahead { turn_one.len() } else { turn_one.len() - 1 };
            assert_eq!(first.cached_tokens(), &turn_one[..fed], "ahead {ahead}: the cached rows");

            engine.model.eos_token_ids.clear();
            let turn: Vec<u32> = turn_one.iter().chain(&prompt[1..6]).copied().collect();
            let (gpu, model) = (&engine.gpu, &engine.model);
            let mut resumed = first.resume(gpu, model, &turn, fed, None, 4, greedy(), &never).await.unwrap();
            let mut fresh = Generator::start(gpu, model, &turn, None, 4, greedy(), &never).await.unwrap();
            let (a, b) = (resumed.logits(gpu, model).await.unwrap(), fresh.logits(gpu, model).await.unwrap());
            check_resumed_logits(&a, &b, &format!("ahead {ahead}: the follow-up"));
            while resumed.next_token(gpu, model).await.unwrap().is_some() {}
            while fresh.next_token(gpu, model).await.unwrap().is_some() {}
            assert_eq!(resumed.generated(), fresh.generated(), "ahead {ahead}: the follow-up's greedy ids");
        }
    });
}

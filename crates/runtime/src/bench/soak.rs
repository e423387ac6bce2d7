//! The soak run of `cargo xtask bench --soak N` (issue 16): N generations in a row on one engine,
//! in turn a caption, a text question, the same question continued from the text question's KV
//! cache (a chat turn), and a caption stopped between two parts of its vision tower or prefill
//! (each time at the next point). Every answer that runs to its end is compared with the same
//! request's answer on the engine when it was fresh (its first generation of that kind); the time
//! of each generation, the memory the process holds and the GPU memory the device holds
//! ([`crate::Gpu::held_bytes`]) are noted, so leaks and slowdowns show as growth from the first
//! tenth (or round) of the run to the last.

use serde::{Deserialize, Serialize};

use crate::engine::{Conversation, Engine, Request, now_ms};
use crate::error::{Result, RuntimeError};
use crate::model::Stop;

/// What a soak run saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakReport {
    pub generations: usize,
    /// Generations stopped on purpose (each failed with `Aborted`, as it must).
    pub stopped: usize,
    /// Answers that differed from the fresh engine's, described.
    pub mismatches: Vec<String>,
    /// Mean milliseconds of a generation in the first and the last tenth of the run.
    pub first_tenth_ms: f64,
    pub last_tenth_ms: f64,
    /// Memory held at the start and at the end, in bytes, and what was measured.
    pub memory_start: u64,
    pub memory_end: u64,
    pub memory_what: String,
    /// Bytes of storage buffers the device holds after the first round (one generation of each
    /// kind: every kernel scratch has grown to its size) and at the end.
    pub gpu_held_after_first_round: u64,
    pub gpu_held_end: u64,
}

/// Run the soak: `caption` is a request with an image, `text` one without.
pub async fn soak(engine: &Engine, caption: &Request, text: &Request, n: usize) -> Result<SoakReport> {
    let (memory_what, memory_start) = memory_now();
    let (vision_parts, prefill_parts) = super::stop_parts(engine, caption);
    let points = 1 + vision_parts + prefill_parts;
    let mut fresh: [Option<Vec<u32>>; 2] = [None, None];
    let mut conversation: Option<Conversation> = None;
    let mut report = SoakReport { generations: n, memory_start, memory_what, ..SoakReport::default() };
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let start = now_ms();
        let kind = i % 4;
        if kind == 3 {
            let at = 1 + (i / 4) % points;
            let stopped = Request { stop: stop_at(at), ..caption.clone() };
            match engine.start(stopped).await {
                Err(RuntimeError::Aborted(_)) => report.stopped += 1,
                Err(e) => return Err(e),
                Ok(_) => report.mismatches.push(format!("generation {i}: stopped at point {at}, it ran on")),
            }
            engine.gpu.finish().await?;
        } else {
            let (request, previous) = match kind {
                0 => (caption.clone(), None),
                1 => (text.clone(), None),
                _ => (text.clone(), conversation.take()),
            };
            let mut session = engine.resume(request, previous).await?;
            while session.next(engine).await?.is_some() {}
            let ids = session.generated().to_vec();
            // The chat turn answers the text question again, from its cache.
            let reference = &mut fresh[kind.min(1)];
            match reference {
                None => *reference = Some(ids),
                Some(want) if *want != ids => {
                    report.mismatches.push(format!("generation {i} (kind {kind}): {ids:?}, fresh {want:?}"));
                }
                Some(_) => {}
            }
            if kind == 1 {
                conversation = Some(session.into_conversation());
            }
        }
        times.push(now_ms() - start);
        if i + 1 == n.min(4) {
            report.gpu_held_after_first_round = engine.gpu.held_bytes();
        }
    }
    let tenth = (n / 10).max(1).min(n);
    let mean = |t: &[f64]| if t.is_empty() { 0.0 } else { t.iter().sum::<f64>() / t.len() as f64 };
    report.first_tenth_ms = mean(&times[..tenth]);
    report.last_tenth_ms = mean(&times[n - tenth..]);
    report.memory_end = memory_now().1;
    report.gpu_held_end = engine.gpu.held_bytes();
    Ok(report)
}

/// A stop that answers true from its `at`-th ask on.
fn stop_at(at: usize) -> Stop {
    let asked = std::cell::Cell::new(0);
    Stop::when(move || {
        asked.set(asked.get() + 1);
        asked.get() >= at
    })
}

/// What the process holds now: natively the resident set (lavapipe's GPU memory is host memory),
/// in the browser the JS heap (Chromium's `performance.memory`) plus the wasm memory.
fn memory_now() -> (String, u64) {
    #[cfg(target_arch = "wasm32")]
    {
        let get = |target: &wasm_bindgen::JsValue, name: &str| {
            js_sys::Reflect::get(target, &name.into()).unwrap_or(wasm_bindgen::JsValue::UNDEFINED)
        };
        let memory = get(&get(&js_sys::global(), "performance"), "memory");
        let heap = get(&memory, "usedJSHeapSize").as_f64().unwrap_or(0.0) as u64;
        let wasm = get(&get(&wasm_bindgen::memory(), "buffer"), "byteLength").as_f64().unwrap_or(0.0) as u64;
        ("JS heap + wasm memory".into(), heap + wasm)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
            .unwrap_or(0);
        ("resident set".into(), pages * 4096)
    }
}

//! What a generation reports at its end (and on request while it runs): token counts, latency,
//! throughput and GPU memory.

use pocketvlm_runtime::engine::Timings;
use pocketvlm_runtime::model::MemoryUsage;
use serde::Serialize;

/// `usage` as JavaScript sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Tokens in the whole prompt (image tokens included).
    pub prompt_tokens: usize,
    /// Prompt tokens taken from the KV cache of an earlier turn instead of being computed.
    pub reused_prompt_tokens: usize,
    pub generated_tokens: usize,
    /// From the call that started the generation to the first generated token.
    pub time_to_first_token_ms: f64,
    pub preprocess_ms: f64,
    /// The vision tower and connector (0 when the image came from the cache).
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// Computed prompt tokens per second of prefill.
    pub prefill_tokens_per_second: f64,
    /// Generated tokens per second of decoding.
    pub decode_tokens_per_second: f64,
    pub kv_cache_bytes: u64,
    pub weight_bytes: u64,
    /// Everything this generation holds on the GPU: weights, tables, KV cache, activations.
    pub gpu_bytes: u64,
}

/// Events per second, 0 when no time passed.
fn rate(count: usize, ms: f64) -> f64 {
    if ms > 0.0 { count as f64 * 1e3 / ms } else { 0.0 }
}

impl Usage {
    pub fn new(
        prompt_tokens: usize,
        reused_prompt_tokens: usize,
        generated_tokens: usize,
        time_to_first_token_ms: f64,
        timings: &Timings,
        memory: &MemoryUsage,
    ) -> Self {
        Self {
            prompt_tokens,
            reused_prompt_tokens,
            generated_tokens,
            time_to_first_token_ms,
            preprocess_ms: timings.preprocess_ms,
            vision_ms: timings.vision_ms,
            prefill_ms: timings.prefill_ms,
            decode_ms: timings.decode_ms,
            prefill_tokens_per_second: rate(prompt_tokens - reused_prompt_tokens, timings.prefill_ms),
            decode_tokens_per_second: rate(generated_tokens, timings.decode_ms),
            kv_cache_bytes: memory.kv_cache,
            weight_bytes: memory.weights,
            gpu_bytes: memory.total(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_computed_tokens_only() {
        let timings = Timings { preprocess_ms: 1.0, vision_ms: 2.0, prefill_ms: 500.0, decode_ms: 250.0 };
        let memory = MemoryUsage { weights: 100, tables: 10, kv_cache: 20, activations: 5 };
        let u = Usage::new(40, 30, 5, 600.0, &timings, &memory);
        assert_eq!(u.prefill_tokens_per_second, 20.0);
        assert_eq!(u.decode_tokens_per_second, 20.0);
        assert_eq!((u.kv_cache_bytes, u.weight_bytes, u.gpu_bytes), (20, 100, 135));
        let idle = Usage::new(1, 0, 0, 0.0, &Timings::default(), &memory);
        assert_eq!((idle.prefill_tokens_per_second, idle.decode_tokens_per_second), (0.0, 0.0));
    }
}

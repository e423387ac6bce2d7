//! How much of a KV cache a new prompt can reuse.
//!
//! A cache holds the keys and values of a token sequence; a new prompt can keep the rows of its
//! longest common prefix with that sequence (causal attention: a row depends only on the tokens
//! before it) and prefill the rest. Three things shorten the prefix further:
//!
//! * image tokens all share one id, so equal ids do not mean equal features: when the image
//!   differs from the cached one, nothing from its first `<image>` token on is reused;
//! * the image features are scattered into a pass from their first row on, so the prefix never
//!   ends inside the prompt's image tokens: it falls back to just before the first of them;
//! * at least one prompt token is always recomputed, since the next token needs the logits of
//!   the last prompt position.

/// Number of leading tokens of `prompt` whose cached rows (of `cached`) stay valid.
/// `same_image` says whether the image behind the `<image>` tokens (`image_token`) is the one
/// the cache was computed with.
pub fn reusable_prefix(cached: &[u32], prompt: &[u32], image_token: u32, same_image: bool) -> usize {
    let common = cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
    let mut keep = common.min(prompt.len().saturating_sub(1));
    if let Some(first) = prompt.iter().position(|&id| id == image_token) {
        let last = prompt.iter().rposition(|&id| id == image_token).unwrap_or(first);
        if !same_image || (keep > first && keep <= last) {
            keep = keep.min(first);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::reusable_prefix;

    const IMG: u32 = 9;

    #[test]
    fn keeps_the_common_prefix() {
        assert_eq!(reusable_prefix(&[1, 2, 3, 4], &[1, 2, 3, 7, 8], IMG, true), 3);
        assert_eq!(reusable_prefix(&[5, 2], &[1, 2, 3], IMG, true), 0);
        assert_eq!(reusable_prefix(&[], &[1, 2, 3], IMG, true), 0);
    }

    #[test]
    fn recomputes_at_least_the_last_prompt_token() {
        assert_eq!(reusable_prefix(&[1, 2, 3], &[1, 2, 3], IMG, true), 2);
        assert_eq!(reusable_prefix(&[1, 2, 3, 4], &[1, 2], IMG, true), 1);
        assert_eq!(reusable_prefix(&[1], &[], IMG, true), 0);
    }

    #[test]
    fn image_tokens_are_reused_only_whole_and_for_the_same_image() {
        let cached = [1, IMG, IMG, IMG, 2, 3];
        // The whole image run is shared.
        assert_eq!(reusable_prefix(&cached, &[1, IMG, IMG, IMG, 2, 4], IMG, true), 5);
        // A different image: stop before its first token.
        assert_eq!(reusable_prefix(&cached, &[1, IMG, IMG, IMG, 2, 4], IMG, false), 1);
        // The prefix would end inside the prompt's run: back to its start.
        assert_eq!(reusable_prefix(&cached, &[1, IMG, IMG, IMG, IMG, 2], IMG, true), 1);
        // An image only in the new part does not shorten the prefix.
        assert_eq!(reusable_prefix(&[1, 2, 3], &[1, 2, 3, IMG, 4], IMG, false), 3);
    }
}

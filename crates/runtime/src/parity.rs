//! Comparing a generation with a reference's step by step, under teacher forcing.
//!
//! Two implementations that round differently decode greedily alike until the first step whose
//! top two logits are closer than their difference; from there the texts part and every later
//! comparison is between different contexts. Teacher forcing removes that drift: the engine
//! follows the reference's tokens ([`crate::engine::Session::force`]) and at every step its logits
//! are compared with the reference's at the same context. With `τ` the tolerance (relative, and
//! absolute below 1) a step passes when
//! - every one of the reference's top logits `e` is matched: `|g − e| ≤ τ·max(|e|, 1)`, and
//! - the engine's top-1 is the reference's token, unless the reference's top two logits lie
//!   within `2τ·max(|e₁|, 1)` of each other (a near tie the tolerance cannot separate; by the first
//!   condition the engine's choice is then one of those two).

use crate::engine::{Engine, Request};
use crate::error::{Result, RuntimeError};

/// What one step of a teacher-forced comparison found.
#[derive(Clone, Debug, PartialEq)]
pub struct StepParity {
    /// The reference's token at this step.
    pub expected_id: u32,
    /// The engine's greedy choice from its own logits at the same context.
    pub got_id: u32,
    /// Largest `|g − e| / max(|e|, 1)` over the reference's top logits.
    pub deviation: f32,
    /// The reference's top-1 logit minus its second.
    pub margin: f32,
    /// The reference's top two lie within twice the tolerance.
    pub near_tie: bool,
}

impl StepParity {
    /// Whether the step meets `tolerance` as the module states.
    pub fn passes(&self, tolerance: f32) -> bool {
        self.deviation <= tolerance && (self.got_id == self.expected_id || self.near_tie)
    }
}

/// Follow `ids` (a reference's tokens) through `request` on `engine` (teacher forcing) and
/// compare the engine's logits at each step with the reference's `tops` there (one list per id).
pub async fn teacher_forced(
    engine: &Engine,
    request: Request,
    ids: &[u32],
    tops: &[Vec<(u32, f32)>],
    tolerance: f32,
) -> Result<Vec<StepParity>> {
    if tops.len() != ids.len() {
        return Err(RuntimeError::Shape(format!("{} top lists for {} ids", tops.len(), ids.len())));
    }
    let mut session = engine.start(request).await?;
    let mut steps = Vec::with_capacity(ids.len());
    for (&id, top) in ids.iter().zip(tops) {
        session.force(engine, id).await?;
        steps.push(compare_step(&session.logits(engine).await?, top, id, tolerance));
    }
    Ok(steps)
}

/// `|g − e| / max(|e|, 1)`: the relative difference the comparison uses, absolute below 1.
pub fn relative_difference(g: f32, e: f32) -> f32 {
    (g - e).abs() / e.abs().max(1.0)
}

/// Compare the engine's `logits` at one step with the reference's `expected_top` (`[id, logit]`,
/// largest first, at least two) and its token `expected_id`.
pub fn compare_step(
    logits: &[f32],
    expected_top: &[(u32, f32)],
    expected_id: u32,
    tolerance: f32,
) -> StepParity {
    let got_id = argmax(logits);
    let deviation = expected_top
        .iter()
        .map(|&(id, e)| logits.get(id as usize).map_or(f32::INFINITY, |&g| relative_difference(g, e)))
        .fold(0.0, f32::max);
    let (first, second) = match expected_top {
        [a, b, ..] => (a.1, b.1),
        _ => (f32::INFINITY, f32::NEG_INFINITY),
    };
    let margin = first - second;
    let near_tie = margin <= 2.0 * tolerance * first.abs().max(1.0);
    StepParity { expected_id, got_id, deviation, margin, near_tie }
}

/// The first index of the largest value (NaN never wins), as the argmax kernel chooses.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] || values[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_passes_within_the_tolerance_and_on_near_ties_only() {
        let top = [(2, 10.0), (0, 9.0), (1, -3.0)];
        // Within 1 % everywhere, same choice.
        let ok = compare_step(&[9.05, -3.01, 10.05], &top, 2, 0.01);
        assert_eq!((ok.got_id, ok.near_tie), (2, false));
        assert!(ok.passes(0.01) && (ok.deviation - 0.05 / 9.0).abs() < 1e-6);
        // A logit off by more than the tolerance fails.
        assert!(!compare_step(&[9.0, -2.0, 10.0], &top, 2, 0.01).passes(0.01));
        // Another choice where the reference's margin is clear: a token outside its top list.
        let other = compare_step(&[9.0, 20.0, 10.0], &[(2, 10.0), (0, 9.0)], 2, 0.01);
        assert!(other.deviation == 0.0 && other.got_id == 1 && !other.passes(0.01));
        // Top two within 2τ (0.5 ≤ 2·3 %·10): a flip inside the tolerance is a near tie and passes.
        let near = compare_step(&[9.76, -3.0, 9.75], &[(2, 10.0), (0, 9.5), (1, -3.0)], 2, 0.03);
        assert!(near.got_id == 0 && near.near_tie && near.passes(0.03));
        // A reference id outside the logits is an infinite deviation.
        assert!(!compare_step(&[1.0], &[(5, 1.0), (0, 0.0)], 5, 0.1).passes(0.1));
    }

    #[test]
    fn argmax_takes_the_first_largest_and_never_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
    }
}

//! Choosing the next token from logits.
//!
//! Greedy (`temperature == 0`) takes the first index of the maximum, like `torch.argmax` and
//! Hugging Face's `do_sample=False`. Otherwise: divide logits by the temperature; keep the `top_k`
//! largest (0 = all); softmax (max-subtracted, in f64); keep the smallest set of most probable
//! tokens whose probability sums to at least `top_p`; renormalise and draw with a seeded PCG32
//! generator, so a seed reproduces a sample exactly.

/// Decoding options.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingOptions {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// PCG32 (XSH-RR), a small seeded generator.
#[derive(Clone, Debug)]
pub struct Pcg32 {
    state: u64,
}

impl Pcg32 {
    const MUL: u64 = 6364136223846793005;
    const INC: u64 = 1442695040888963407;

    pub fn new(seed: u64) -> Self {
        let mut rng = Self { state: 0 };
        rng.next_u32();
        rng.state = rng.state.wrapping_add(seed);
        rng.next_u32();
        rng
    }

    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(Self::MUL).wrapping_add(Self::INC);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        xorshifted.rotate_right((old >> 59) as u32)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        let hi = u64::from(self.next_u32()) << 21;
        let lo = u64::from(self.next_u32()) >> 11;
        ((hi | lo) as f64) / (1u64 << 53) as f64
    }
}

/// First index of the maximum (NaN counts as the maximum, as in `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        let b = logits[best];
        if !b.is_nan() && (v.is_nan() || v > b) {
            best = i;
        }
    }
    best as u32
}

/// Draw a token as described in the module docs.
pub fn sample(logits: &[f32], options: &SamplingOptions, rng: &mut Pcg32) -> u32 {
    if options.is_greedy() || logits.is_empty() {
        return argmax(logits);
    }
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
    if order.is_empty() {
        return argmax(logits);
    }
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if options.top_k > 0 {
        order.truncate(options.top_k);
    }
    let t = f64::from(options.temperature);
    let max = f64::from(logits[order[0]]) / t;
    let mut probs: Vec<f64> = order.iter().map(|&i| (f64::from(logits[i]) / t - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if options.top_p < 1.0 {
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cumulative += p;
            if cumulative >= f64::from(options.top_p) {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.next_f64() * total;
    for (p, &i) in probs.iter().zip(&order) {
        if r < *p {
            return i as u32;
        }
        r -= p;
    }
    order[order.len() - 1] as u32
}

/// The `k` largest logits as `(id, logit)`, largest first (ties by lower id).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| (i as u32, logits[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(sample(&[0.5, 2.0, 1.0], &SamplingOptions::default(), &mut Pcg32::new(1)), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.1, 0.9, 0.3, 0.8];
        for seed in 0..20 {
            let mut rng = Pcg32::new(seed);
            let k1 = SamplingOptions { temperature: 1.0, top_k: 1, top_p: 1.0, seed };
            assert_eq!(sample(&logits, &k1, &mut rng), 1);
            let p = SamplingOptions { temperature: 1.0, top_k: 0, top_p: 1e-6, seed };
            assert_eq!(sample(&logits, &p, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_is_reproducible() {
        // p = softmax([0, ln 3]) = [0.25, 0.75].
        let logits = [0.0, 3f32.ln()];
        let options = SamplingOptions { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 };
        let mut rng = Pcg32::new(7);
        let ones = (0..20000).filter(|_| sample(&logits, &options, &mut rng) == 1).count();
        let frac = ones as f64 / 20000.0;
        assert!((frac - 0.75).abs() < 0.015, "{frac}");
        let a: Vec<u32> = (0..50).scan(Pcg32::new(3), |r, _| Some(sample(&logits, &options, r))).collect();
        let b: Vec<u32> = (0..50).scan(Pcg32::new(3), |r, _| Some(sample(&logits, &options, r))).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn top_k_lists_largest_first() {
        assert_eq!(top_k(&[1.0, 5.0, 3.0, 5.0], 3), vec![(1, 5.0), (3, 5.0), (2, 3.0)]);
    }
}

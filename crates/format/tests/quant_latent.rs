//! The pieces of the reference quantized linear that the latent K/V cache uses:
//! `quantize_token` + `product` is `forward` bit for bit, and the "absorbed V" product on a
//! mixed float latent matches mixing the per-token products.

use pocketvlm_format::quant::{
    ActivationQuant, Bits, Construction, QuantError, QuantLinear, QuantWeights, Rotation, Scheme,
};

/// Deterministic values in [−1, 1) from a 64-bit linear congruential generator.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_add(0x2545_F491_4F6C_DD1D);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f64 / (1u64 << 23) as f64 - 1.0) as f32
        })
        .collect()
}

/// A quantized layer `[out, cols]` with absmax weight scales (per channel or per `group`),
/// a bias, and the given online rotation.
fn layer(
    scheme: Scheme,
    out: usize,
    cols: usize,
    group: Option<usize>,
    online: Vec<Rotation>,
) -> QuantLinear {
    let bits = scheme.weight_bits();
    let g = group.unwrap_or(cols);
    let qmax = bits.qmax() as f32;
    let w = values(cols as u64, out * cols);
    let (mut ints, mut scales) = (Vec::new(), Vec::new());
    for chunk in w.chunks(g) {
        let s = chunk.iter().fold(0f32, |m, v| m.max(v.abs())) / qmax;
        scales.push(s);
        ints.extend(chunk.iter().map(|v| (v / s).round_ties_even().clamp(-qmax, qmax) as i8));
    }
    let weights = QuantWeights::new(bits, out, cols, group, ints, scales).unwrap();
    let act = ActivationQuant::new(scheme.activation_bits(), 0.9).unwrap();
    QuantLinear::new(weights, act, online, Some(values(7, out))).unwrap()
}

/// The layers the tests run on: every scheme, grouped INT4, with and without online rotations,
/// and an up-factor-like rank with no rotation.
fn layers() -> Vec<QuantLinear> {
    let rot = |n, c| vec![Rotation::new(n, c, Some(5)).unwrap()];
    vec![
        layer(Scheme::W8A8, 24, 48, None, rot(48, Construction::Kronecker)),
        layer(Scheme::W4A8, 16, 128, Some(64), rot(128, Construction::BlockDiagonal)),
        layer(Scheme::W4A4, 20, 96, None, vec![]),
        layer(Scheme::W4A8, 16, 21, None, vec![]),
        layer(Scheme::W8A8, 16, 13, None, vec![]),
    ]
}

#[test]
fn quantize_token_then_product_is_forward_bit_for_bit() {
    for l in layers() {
        let cols = l.weights.cols;
        let x: Vec<f32> = values(3, 6 * cols).iter().map(|v| v * 4.0).collect();
        let want = l.forward(&x).unwrap();
        let mut got = Vec::new();
        let mut q = vec![0i8; cols];
        for row in x.chunks(cols) {
            let mut token = row.to_vec();
            let s_a = l.quantize_token(&mut token, &mut q).unwrap();
            l.product(&q, s_a, &mut got);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "cols {cols}");
        assert_eq!(bits(&got), bits(&contract(&l, &x)), "cols {cols}");
    }
}

/// Steps 1–7 of the contract written out from its text, token by token, as an independent
/// check of the reference layer.
fn contract(l: &QuantLinear, x: &[f32]) -> Vec<f32> {
    let w = &l.weights;
    let groups = w.cols / w.group;
    let mut y = Vec::new();
    for row in x.chunks(w.cols) {
        let mut token = row.to_vec();
        for r in &l.online {
            r.apply(&mut token).unwrap();
        }
        let mut q = vec![0i8; w.cols];
        let s_a = l.activation.quantize(&token, &mut q);
        for o in 0..w.out {
            let mut u = 0f32;
            for g in 0..groups {
                let acc: i32 = (g * w.group..(g + 1) * w.group)
                    .map(|j| w.values[o * w.cols + j] as i32 * q[j] as i32)
                    .sum();
                let t = acc as f32 * w.scales[o * groups + g];
                u = if g == 0 { t } else { u + t };
            }
            y.push(u * s_a + l.bias.as_ref().map_or(0.0, |b| b[o]));
        }
    }
    y
}

#[test]
fn quantize_token_checks_lengths() {
    let l = layer(Scheme::W8A8, 4, 13, None, vec![]);
    let err = l.quantize_token(&mut [0.0; 12], &mut [0; 13]).unwrap_err();
    assert_eq!(err, QuantError::LengthMismatch { what: "layer input token", expected: 13, found: 12 });
    let err = l.quantize_token(&mut [0.0; 13], &mut [0; 14]).unwrap_err();
    assert_eq!(err, QuantError::LengthMismatch { what: "activation integers", expected: 13, found: 14 });
}

/// Cached latent pairs `(q_a, s_a)` of `tokens` tokens of an up factor (no online transforms).
fn latents(l: &QuantLinear, tokens: usize) -> Vec<(Vec<i8>, f32)> {
    let cols = l.weights.cols;
    values(11, tokens * cols)
        .chunks(cols)
        .enumerate()
        .map(|(t, row)| {
            let mut token: Vec<f32> = row.iter().map(|v| v * (1.0 + t as f32)).collect();
            let mut q = vec![0i8; cols];
            let s = l.quantize_token(&mut token, &mut q).unwrap();
            (q, s)
        })
        .collect()
}

/// `ĉ[j] = Σ_t p_t · (s_a,t · f32(q_a,t[j]))`, accumulated over `t` ascending in f32.
fn mix(p: &[f32], pairs: &[(Vec<i8>, f32)]) -> Vec<f32> {
    let mut c = vec![0f32; pairs[0].0.len()];
    for (&p, (q, s)) in p.iter().zip(pairs) {
        for (c, &q) in c.iter_mut().zip(q) {
            *c += p * (s * q as f32);
        }
    }
    c
}

/// `Σ_j |Ŵ[o][j] · ĉ[j]|` (f64): the size of the terms behind output `o`, the scale that
/// float rounding of a dot product is relative to.
fn term_size(l: &QuantLinear, o: usize, c: &[f32]) -> f64 {
    let w = l.weights.dequantize();
    let cols = l.weights.cols;
    (0..cols).map(|j| (w[o * cols + j] * c[j] as f64).abs()).sum::<f64>()
        + l.bias.as_ref().map_or(0.0, |b| b[o].abs() as f64)
}

/// With all weight on one token, `ĉ` is that token's dequantized latent and the absorbed
/// product is the token's own product up to rounding: within `8·ε` of the size of the terms
/// (measured: at most 0.79 ε).
#[test]
fn absorbed_with_one_token_is_the_product() {
    for l in layers().into_iter().filter(|l| l.online.is_empty()) {
        let out = l.weights.out;
        let pairs = latents(&l, 4);
        for (t, (q, s)) in pairs.iter().enumerate() {
            let mut p = vec![0f32; pairs.len()];
            p[t] = 1.0;
            let c = mix(&p, &pairs);
            let (mut want, mut got) = (Vec::new(), Vec::new());
            l.product(q, *s, &mut want);
            l.absorbed(&c, 0..out, &mut got);
            for o in 0..out {
                let err = (got[o] as f64 - want[o] as f64).abs() / term_size(&l, o, &c);
                assert!(err <= 8.0 * f32::EPSILON as f64, "token {t} out {o}: {} vs {}", got[o], want[o]);
            }
        }
    }
}

/// A general softmax-like mix: the absorbed product of `ĉ` matches `Σ_t p_t · product_t`
/// within 1e-5 of the largest output (measured: at most 2.4e-7).
#[test]
fn absorbed_matches_mixing_the_products() {
    for l in layers().into_iter().filter(|l| l.online.is_empty()) {
        let out = l.weights.out;
        let pairs = latents(&l, 7);
        let raw: Vec<f32> = values(17, pairs.len()).iter().map(|v| v.exp()).collect();
        let total: f32 = raw.iter().sum();
        let p: Vec<f32> = raw.iter().map(|v| v / total).collect();
        let mut want = vec![0f64; out];
        for (&p, (q, s)) in p.iter().zip(&pairs) {
            let mut v = Vec::new();
            l.product(q, *s, &mut v);
            for (w, v) in want.iter_mut().zip(v) {
                *w += p as f64 * v as f64;
            }
        }
        let mut got = Vec::new();
        l.absorbed(&mix(&p, &pairs), 0..out, &mut got);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for o in 0..out {
            let err = (got[o] as f64 - want[o]).abs() / scale;
            assert!(err <= 1e-5, "cols {} out {o}: {} vs {} ({err:e})", l.weights.cols, got[o], want[o]);
        }
        // a row range gives those rows of the whole product
        let mut part = Vec::new();
        l.absorbed(&mix(&p, &pairs), 3..9, &mut part);
        assert_eq!(part, got[3..9]);
    }
}

#[test]
fn absorbed_adds_the_bias_once() {
    let weights = QuantWeights::new(Bits::Int8, 2, 2, None, vec![1, 2, -3, 4], vec![0.5, 0.25]).unwrap();
    let act = ActivationQuant::new(Bits::Int8, 1.0).unwrap();
    let l = QuantLinear::new(weights, act, vec![], Some(vec![10.0, -10.0])).unwrap();
    let mut y = Vec::new();
    l.absorbed(&[2.0, 1.0], 0..2, &mut y);
    assert_eq!(y, vec![0.5 * (2.0 + 2.0) + 10.0, 0.25 * (-6.0 + 4.0) - 10.0]);
}

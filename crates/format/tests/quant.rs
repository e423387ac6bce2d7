//! The low-bit contract: Hadamard constructions, fast rotations, packing, the activation
//! quantizer and the reference quantized linear against a float simulation.

use pocketvlm_format::quant::hadamard::{hadamard, sylvester};
use pocketvlm_format::quant::pack::{pack, unpack};
use pocketvlm_format::quant::{
    ActivationQuant, ActivationSpec, Bits, Construction, QuantError, QuantLinear, QuantWeights,
    QuantizedLayer, Rotation, RotationSpec, Scheme,
};

/// Deterministic values in [−1, 1) (xorshift).
fn noise(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// Sizes the models use: SmolVLM-256M/500M text and vision widths, MLP widths, the tiny fixture.
const SIZES: [usize; 12] = [576, 960, 768, 1536, 2560, 3072, 48, 32, 64, 128, 16, 12];

#[test]
fn hadamard_matrices_are_hadamard() {
    for m in [1, 2, 4, 8, 12, 20, 28, 36, 44, 60, 64] {
        let h = hadamard(m).unwrap_or_else(|| panic!("order {m}"));
        assert!(h.iter().all(|&v| v == 1 || v == -1), "order {m}");
        for i in 0..m {
            for j in 0..m {
                let dot: i32 = (0..m).map(|k| h[i * m + k] as i32 * h[j * m + k] as i32).sum();
                assert_eq!(dot, if i == j { m as i32 } else { 0 }, "order {m}, rows {i},{j}");
            }
        }
    }
    for m in [3, 6, 10, 18, 92] {
        assert!(hadamard(m).is_none(), "{m} has no construction here");
    }
    assert_eq!(sylvester(2), vec![1, 1, 1, -1]);
}

#[test]
fn kronecker_factors_are_the_smallest_hadamard_orders() {
    let want = [
        (576, 36, 16),
        (960, 60, 16),
        (768, 12, 64),
        (1536, 12, 128),
        (2560, 20, 128),
        (3072, 12, 256),
        (48, 12, 4),
        (12288, 12, 1024),
        (128, 1, 128),
    ];
    for (n, m, p) in want {
        let r = Rotation::new(n, Construction::Kronecker, None).unwrap();
        assert_eq!(r.factors(), (m, p), "{n}");
        let b = Rotation::new(n, Construction::BlockDiagonal, None).unwrap();
        assert_eq!(b.factors().1, 1 << n.trailing_zeros(), "{n}");
    }
    assert_eq!(Rotation::new(9, Construction::Kronecker, None).unwrap_err(), QuantError::NoHadamard(9));
    assert!(Rotation::new(0, Construction::BlockDiagonal, None).is_err());
    // SigLIP-so400m (the 2.2B's vision tower): the MLP's 4304 = 16·269 has no core, so it is
    // rotated block-diagonally; its connector's 10368 = 648·16 has one (Paley I, q = 647).
    assert_eq!(Rotation::new(4304, Construction::Kronecker, None).unwrap_err(), QuantError::NoHadamard(4304));
    assert_eq!(Construction::Kronecker.available_for(4304), Construction::BlockDiagonal);
    let b = Rotation::new(4304, Construction::Kronecker.available_for(4304), None).unwrap();
    assert_eq!(b.factors(), (269, 16));
    assert_eq!(Construction::Kronecker.available_for(10368), Construction::Kronecker);
    assert_eq!(Rotation::new(10368, Construction::Kronecker, None).unwrap().factors(), (648, 16));
    assert_eq!(Construction::Kronecker.available_for(576), Construction::Kronecker);
    assert_eq!(Construction::BlockDiagonal.available_for(576), Construction::BlockDiagonal);
}

fn matvec(m: &[f64], x: &[f64]) -> Vec<f64> {
    let n = x.len();
    (0..n).map(|i| (0..n).map(|j| m[i * n + j] * x[j]).sum()).collect()
}

fn matvec_t(m: &[f64], x: &[f64]) -> Vec<f64> {
    let n = x.len();
    (0..n).map(|j| (0..n).map(|i| m[i * n + j] * x[i]).sum()).collect()
}

#[test]
fn fast_rotation_equals_explicit_matrix_and_is_orthogonal() {
    for n in SIZES {
        for construction in [Construction::Kronecker, Construction::BlockDiagonal] {
            for seed in [None, Some(7)] {
                let r = Rotation::new(n, construction, seed).unwrap();
                let m = r.matrix();
                for k in 0..2u64 {
                    let x = noise(k + n as u64, n);
                    let mut fast = x.clone();
                    r.apply(&mut fast).unwrap();
                    let slow = matvec(&m, &x);
                    let back = matvec_t(&m, &fast);
                    for i in 0..n {
                        assert!((fast[i] - slow[i]).abs() < 1e-12, "{n} {construction:?} {seed:?}: {i}");
                        assert!((back[i] - x[i]).abs() < 1e-12, "{n} {construction:?}: Rᵀ R x ≠ x at {i}");
                    }
                    // the f32 path follows the same order of operations
                    let mut f = x.iter().map(|&v| v as f32).collect::<Vec<_>>();
                    r.apply(&mut f).unwrap();
                    assert!(f.iter().zip(&slow).all(|(a, b)| (*a as f64 - b).abs() < 1e-5));
                }
                if n <= 128 {
                    for i in 0..n {
                        for j in 0..n {
                            let dot: f64 = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum();
                            let want = if i == j { 1.0 } else { 0.0 };
                            assert!((dot - want).abs() < 1e-12, "{n} {construction:?}: R Rᵀ [{i},{j}]");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn seeds_change_the_signs_and_rows_apply_independently() {
    let a = Rotation::new(48, Construction::Kronecker, Some(1)).unwrap().matrix();
    let b = Rotation::new(48, Construction::Kronecker, Some(2)).unwrap().matrix();
    assert_ne!(a, b);
    let r = Rotation::new(48, Construction::Kronecker, Some(3)).unwrap();
    let x = noise(5, 96);
    let mut rows = x.clone();
    r.apply_rows(&mut rows).unwrap();
    let mut second = x[48..].to_vec();
    r.apply(&mut second).unwrap();
    assert_eq!(&rows[48..], &second[..]);
    assert!(matches!(r.apply(&mut [0.0f64; 47]), Err(QuantError::LengthMismatch { .. })));
    assert!(r.apply_rows(&mut [0.0f64; 50]).is_err());
}

#[test]
fn packing_round_trips_with_the_documented_bit_order() {
    // INT8: value 4w+b in bits 8b..8b+7 of word w (little-endian bytes)
    let p = pack(Bits::Int8, &[1, -1, 2, -2], 4).unwrap();
    assert_eq!(u32::from_le_bytes(p[..4].try_into().unwrap()), 0xFE02_FF01);
    // INT4: byte b holds value 8w+b (low nibble) and 8w+4+b (high nibble)
    let v4 = [1, 2, 3, 4, 5, 6, 7, -8];
    let p = pack(Bits::Int4, &v4, 8).unwrap();
    assert_eq!(p, vec![0x51, 0x62, 0x73, 0x84]);
    // the dot4I8Packed masks give 16 · the values, lanes in order
    let word = u32::from_le_bytes(p[..4].try_into().unwrap());
    let lanes = |w: u32| w.to_le_bytes().map(|b| b as i8 as i32 / 16);
    assert_eq!(lanes((word << 4) & 0xF0F0_F0F0), [1, 2, 3, 4]);
    assert_eq!(lanes(word & 0xF0F0_F0F0), [5, 6, 7, -8]);

    // Whole words and padded rows (a rank that is not a multiple of 4 or 8).
    for (bits, cols) in
        [(Bits::Int8, 12), (Bits::Int4, 16), (Bits::Int8, 13), (Bits::Int4, 9), (Bits::Int4, 3)]
    {
        let q = bits.qmax() + 1;
        let mut values: Vec<i8> = noise(3, 3 * cols).iter().map(|v| (v * q as f64).floor() as i8).collect();
        values[1] = -q as i8; // the most negative stored value
        values[2] = (q - 1) as i8;
        let packed = pack(bits, &values, cols).unwrap();
        let row_bytes = cols.div_ceil(bits.per_word()) * 4;
        assert_eq!(packed.len(), 3 * row_bytes, "{bits:?} {cols}");
        assert_eq!(bits.packed_len(3, cols), packed.len());
        assert_eq!(unpack(bits, &packed, 3, cols).unwrap(), values, "{bits:?} {cols}");
        // every row starts on a word; the padding of each row is zero
        for (r, row) in packed.chunks(row_bytes).enumerate() {
            let back = unpack(bits, row, 1, cols).unwrap();
            assert_eq!(back, values[r * cols..(r + 1) * cols]);
        }
    }
    // INT8 padding: the 13th value of a row sits in byte 0 of word 3, bytes 1..3 are zero.
    let row: Vec<i8> = (1..=13).collect();
    assert_eq!(&pack(Bits::Int8, &row, 13).unwrap()[12..], &[13, 0, 0, 0]);
    // INT4 padding: 3 values fill the low nibbles of bytes 0..2, everything else is zero.
    assert_eq!(pack(Bits::Int4, &[1, -1, 7], 3).unwrap(), [0x01, 0x0F, 0x07, 0x00]);
    // Non-zero padding is refused (it would change a kernel's dot product).
    assert_eq!(unpack(Bits::Int8, &[1, 2, 3, 4], 1, 3), Err(QuantError::NonZeroPadding { bits: 8, cols: 3 }));
    assert_eq!(
        unpack(Bits::Int4, &[0x01, 0x0F, 0x07, 0x10], 1, 3),
        Err(QuantError::NonZeroPadding { bits: 4, cols: 3 })
    );
    assert_eq!(
        pack(Bits::Int4, &[8, 0, 0, 0, 0, 0, 0, 0], 8),
        Err(QuantError::ValueOutOfRange { value: 8, bits: 4 })
    );
    assert!(matches!(pack(Bits::Int4, &[], 0), Err(QuantError::EmptyRow { .. })));
    assert!(matches!(pack(Bits::Int8, &[0; 6], 4), Err(QuantError::LengthMismatch { .. })));
    assert!(unpack(Bits::Int4, &[0; 3], 1, 6).is_err());
}

#[test]
fn activation_rounding_is_half_to_even_and_clipped() {
    // qmax 7, clip 7/8: k = 1/8 exactly; M = 8 gives s = 1, r = 1
    let a = ActivationQuant::new(Bits::Int4, 0.875).unwrap();
    assert_eq!(a.step(), 0.125);
    let mut q = [0i8; 6];
    let s = a.quantize(&[8.0, 2.5, -2.5, 3.5, 0.5, -7.6], &mut q);
    assert_eq!(s, 1.0);
    assert_eq!(q, [7, 2, -2, 4, 0, -7]);
    // an all-zero token has scale 0 and zero integers
    let mut q = [5i8; 3];
    assert_eq!(a.quantize(&[0.0, -0.0, 0.0], &mut q), 0.0);
    assert_eq!(q, [0, 0, 0]);
    for bad in [0.0, -0.5, 1.5, f32::NAN] {
        assert!(matches!(ActivationQuant::new(Bits::Int8, bad), Err(QuantError::BadClipRatio(_))));
    }
}

/// Per-channel (or grouped) round-to-nearest weights for the reference tests.
fn rtn(w: &[f64], out: usize, cols: usize, bits: Bits, group: Option<usize>) -> QuantWeights {
    let g = group.unwrap_or(cols);
    let qmax = bits.qmax() as f64;
    let mut scales = Vec::new();
    let mut values = Vec::new();
    for o in 0..out {
        for chunk in w[o * cols..(o + 1) * cols].chunks(g) {
            let s = (chunk.iter().fold(0f64, |m, v| m.max(v.abs())) / qmax) as f32;
            scales.push(s);
            values.extend(chunk.iter().map(|v| (v / s as f64).round_ties_even().clamp(-qmax, qmax) as i8));
        }
    }
    QuantWeights::new(bits, out, cols, group, values, scales).unwrap()
}

#[test]
fn reference_linear_equals_float_simulation() {
    let cases = [
        (Scheme::W8A8, None, 48, Some(Construction::Kronecker)),
        (Scheme::W4A8, Some(64), 128, Some(Construction::Kronecker)),
        (Scheme::W4A4, None, 96, Some(Construction::BlockDiagonal)),
        (Scheme::W4A8, Some(128), 256, Some(Construction::BlockDiagonal)),
        // ranks that leave the packed rows padded (no online rotation, like an up factor)
        (Scheme::W8A8, None, 45, None),
        (Scheme::W4A8, None, 45, None),
        (Scheme::W4A4, None, 13, None),
    ];
    for (scheme, group, cols, construction) in cases {
        let (out, tokens, clip) = (24, 5, 0.9f32);
        let w = noise(11, out * cols);
        let weights = rtn(&w, out, cols, scheme.weight_bits(), group);
        let bias: Vec<f32> = noise(12, out).iter().map(|v| *v as f32).collect();
        let rot = construction.map(|c| Rotation::new(cols, c, Some(42)).unwrap());
        let act = ActivationQuant::new(scheme.activation_bits(), clip).unwrap();
        // through the packed layout, as a model file holds it
        let packed = pack(weights.bits, &weights.values, cols).unwrap();
        let weights =
            QuantWeights::from_packed(weights.bits, out, cols, group, &packed, weights.scales).unwrap();
        let online: Vec<Rotation> = rot.iter().cloned().collect();
        let layer = QuantLinear::new(weights.clone(), act, online, Some(bias.clone())).unwrap();
        let x: Vec<f32> = noise(13, tokens * cols).iter().map(|v| (v * 3.0) as f32).collect();
        let y = layer.forward(&x).unwrap();

        // float simulation in f64: rotate, fake-quantize, multiply by the dequantized weights
        let m = match &rot {
            Some(r) => r.matrix(),
            None => (0..cols * cols).map(|k| f64::from(u8::from(k / cols == k % cols))).collect(),
        };
        let w_hat = weights.dequantize();
        let qmax = scheme.activation_bits().qmax() as f64;
        for t in 0..tokens {
            let xr = matvec(&m, &x[t * cols..(t + 1) * cols].iter().map(|&v| v as f64).collect::<Vec<_>>());
            let s = xr.iter().fold(0f64, |a, v| a.max(v.abs())) * clip as f64 / qmax;
            let x_hat: Vec<f64> =
                xr.iter().map(|v| s * (v / s).round_ties_even().clamp(-qmax, qmax)).collect();
            let y_sim: Vec<f64> = (0..out)
                .map(|o| (0..cols).map(|j| w_hat[o * cols + j] * x_hat[j]).sum::<f64>() + bias[o] as f64)
                .collect();
            let scale = y_sim.iter().fold(0f64, |a, v| a.max(v.abs()));
            for o in 0..out {
                let d = (y[t * out + o] as f64 - y_sim[o]).abs();
                assert!(
                    d <= 2e-3 * scale,
                    "{scheme:?} {group:?}: token {t} out {o}: {} vs {}",
                    y[t * out + o],
                    y_sim[o]
                );
            }
        }
    }
}

#[test]
fn reference_linear_is_exact_on_representable_inputs() {
    // integers small enough that every f32 step is exact: y = s_w · s_a · Σ q_w q_a + b
    let weights =
        QuantWeights::new(Bits::Int8, 2, 4, None, vec![1, -2, 3, 127, 0, 5, -7, 1], vec![0.5, 2.0]).unwrap();
    let act = ActivationQuant::new(Bits::Int4, 0.875).unwrap(); // k = 1/8
    let layer = QuantLinear::new(weights, act, vec![], Some(vec![1.0, -1.0])).unwrap();
    let y = layer.forward(&[8.0, 1.0, -2.0, 0.5, 0.0, 0.0, 0.0, 0.0]).unwrap();
    // s_a = 1, q_a = [7, 1, -2, 0] (0.5 ties to even 0)
    assert_eq!(y, vec![0.5 * (7.0 - 2.0 - 6.0) + 1.0, 2.0 * (5.0 + 14.0) - 1.0, 1.0, -1.0]);
}

#[test]
fn bad_recipes_get_typed_errors() {
    assert_eq!(Scheme::parse("w3a8"), Err(QuantError::UnknownScheme("w3a8".into())));
    assert_eq!(Scheme::parse("w4a4").unwrap().activation_bits(), Bits::Int4);
    assert_eq!(Bits::from_bits(2), Err(QuantError::UnsupportedBits(2)));
    let layer = |bits, group, act_bits| QuantizedLayer {
        weight: "w".into(),
        weight_bits: bits,
        group,
        activation: ActivationSpec { bits: act_bits, clip_ratio: 1.0 },
        online: vec![],
    };
    layer(4, Some(64), 4).validate(576).unwrap();
    layer(8, None, 8).validate(576).unwrap();
    for (l, cols) in
        [(layer(4, Some(32), 4), 576), (layer(4, Some(128), 4), 576), (layer(8, Some(64), 8), 576)]
    {
        assert!(matches!(l.validate(cols), Err(QuantError::UnsupportedGroup { .. })), "{l:?}");
    }
    assert_eq!(layer(4, None, 3).validate(64), Err(QuantError::UnsupportedBits(3)));
    assert!(matches!(layer(8, None, 8).validate(140_000), Err(QuantError::AccumulatorOverflow { .. })));
    layer(4, None, 8).validate(60).unwrap(); // padded rows
    assert!(matches!(layer(4, None, 8).validate(0), Err(QuantError::EmptyRow { .. })));
    let mut l = layer(8, None, 8);
    l.online = vec![RotationSpec { construction: Construction::Kronecker, size: 48, seed: Some(1) }];
    assert_eq!(l.validate(64), Err(QuantError::TransformSize { size: 48, cols: 64 }));
    l.online[0].size = 64;
    l.validate(64).unwrap();
    assert!(matches!(
        QuantWeights::new(Bits::Int4, 1, 8, None, vec![8, 0, 0, 0, 0, 0, 0, 0], vec![1.0]),
        Err(QuantError::ValueOutOfRange { .. })
    ));
    assert!(matches!(
        QuantWeights::new(Bits::Int8, 1, 4, None, vec![0; 4], vec![f32::NAN]),
        Err(QuantError::BadScale { .. })
    ));
}

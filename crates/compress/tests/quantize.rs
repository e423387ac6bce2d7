//! Weight quantizer: the analytic error bound, the clip search, grouping and bad recipes.

use pocketvlm_compress::CompressError;
use pocketvlm_compress::quant::{ClipSearch, quantize_weights};
use pocketvlm_format::quant::pack::{pack, unpack};
use pocketvlm_format::quant::{Bits, QuantError, QuantWeights};

/// Heavy-tailed deterministic weights (a few large outliers per row, like real layers).
fn weights(out: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..out * cols)
        .map(|k| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            (if k % 37 == 0 { u * 20.0 } else { u }) as f32
        })
        .collect()
}

fn sq_err(w: &[f32], q: &QuantWeights) -> f64 {
    w.iter().zip(q.dequantize()).map(|(a, b)| (*a as f64 - b).powi(2)).sum()
}

#[test]
fn error_is_within_half_a_step_without_clipping() {
    let (out, cols) = (16, 256);
    let w = weights(out, cols, 9);
    for (bits, group) in
        [(Bits::Int8, None), (Bits::Int4, None), (Bits::Int4, Some(64)), (Bits::Int4, Some(128))]
    {
        let q = quantize_weights(&w, out, cols, bits, group, ClipSearch::NONE).unwrap();
        let g = group.unwrap_or(cols);
        let deq = q.dequantize();
        for (k, (&a, b)) in w.iter().zip(&deq).enumerate() {
            let s = q.scales[k / g] as f64;
            assert!((a as f64 - b).abs() <= s / 2.0 * (1.0 + 1e-6), "{bits:?} {group:?} element {k}");
        }
        // the largest magnitude of each row or group maps to ±qmax
        for (span, qs) in w.chunks(g).zip(q.values.chunks(g)) {
            let arg = (0..g).max_by(|&i, &j| span[i].abs().total_cmp(&span[j].abs())).unwrap();
            assert_eq!(qs[arg].unsigned_abs() as i32, bits.qmax(), "{bits:?} {group:?}");
        }
        // packing the integers round-trips
        let packed = pack(bits, &q.values, cols).unwrap();
        assert_eq!(unpack(bits, &packed, q.out, cols).unwrap(), q.values);
    }
}

#[test]
fn clip_search_never_loses_and_helps_heavy_tails() {
    let (out, cols) = (32, 128);
    let w = weights(out, cols, 4);
    for bits in [Bits::Int4, Bits::Int8] {
        let plain = quantize_weights(&w, out, cols, bits, None, ClipSearch::NONE).unwrap();
        let searched = quantize_weights(&w, out, cols, bits, None, ClipSearch::default()).unwrap();
        let (e0, e1) = (sq_err(&w, &plain), sq_err(&w, &searched));
        assert!(e1 <= e0, "{bits:?}: {e1} > {e0}");
        // clipped scales are never larger than the absmax scale
        assert!(searched.scales.iter().zip(&plain.scales).all(|(a, b)| a <= b));
        if bits == Bits::Int4 {
            assert!(e1 < 0.98 * e0, "INT4 with outliers should gain from clipping: {e1} vs {e0}");
        }
    }
    // grouping helps INT4 too
    let grouped = quantize_weights(&w, out, cols, Bits::Int4, Some(64), ClipSearch::default()).unwrap();
    let per_row = quantize_weights(&w, out, cols, Bits::Int4, None, ClipSearch::default()).unwrap();
    assert!(sq_err(&w, &grouped) < sq_err(&w, &per_row));
    assert_eq!(grouped.scales.len(), out * 2);
}

#[test]
fn zero_rows_and_bad_recipes() {
    let q = quantize_weights(&[0.0; 8], 1, 8, Bits::Int4, None, ClipSearch::default()).unwrap();
    assert_eq!((q.values, q.scales), (vec![0; 8], vec![0.0]));
    let w = weights(2, 96, 1);
    let err = |r: Result<QuantWeights, CompressError>| match r {
        Err(CompressError::Quant(e)) => e,
        Err(CompressError::Format(pocketvlm_format::FormatError::Quant(e))) => e,
        other => panic!("expected a quantization error, got {other:?}"),
    };
    assert!(matches!(
        err(quantize_weights(&w, 2, 96, Bits::Int4, Some(64), ClipSearch::NONE)),
        QuantError::UnsupportedGroup { group: 64, cols: 96, .. }
    ));
    assert!(matches!(
        err(quantize_weights(&w, 2, 96, Bits::Int8, Some(32), ClipSearch::NONE)),
        QuantError::UnsupportedGroup { .. }
    ));
    assert!(matches!(
        err(quantize_weights(&w[..0], 2, 0, Bits::Int4, None, ClipSearch::NONE)),
        QuantError::EmptyRow { .. }
    ));
}

//! Measurement (ignored by default): how much each rotation construction lowers the INT4
//! weight quantization error of real SmolVLM-256M weights. Run with
//! `POCKETVLM_REAL=/work/big/smolvlm-256m-real cargo test -p pocketvlm-compress --test
//! hadamard_quality -- --ignored --nocapture`.

use std::path::PathBuf;

use pocketvlm_compress::checkpoint::Checkpoint;
use pocketvlm_compress::quant::{ClipSearch, quantize_weights};
use pocketvlm_format::quant::{Bits, Construction, Rotation};

/// Relative squared error `‖W − Ŵ‖² / ‖W‖²` of per-channel INT4 (clip search on) of `w`
/// rotated on its input side by `r` (`W Rᵀ`, the Frobenius norm is unchanged by `R`).
fn rel_error(w: &[f32], out: usize, cols: usize, r: Option<&Rotation>, group: Option<usize>) -> f64 {
    let mut w = w.to_vec();
    if let Some(r) = r {
        r.apply_rows(&mut w).unwrap();
    }
    let q = quantize_weights(&w, out, cols, Bits::Int4, group, ClipSearch::default()).unwrap();
    let num: f64 = w.iter().zip(q.dequantize()).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
    num / w.iter().map(|a| (*a as f64).powi(2)).sum::<f64>()
}

#[test]
#[ignore = "needs the real 256M-shaped checkpoint (POCKETVLM_REAL)"]
fn int4_error_by_rotation_construction() {
    let dir = PathBuf::from(std::env::var("POCKETVLM_REAL").unwrap_or("/work/big/smolvlm-256m-real".into()));
    let ck = Checkpoint::open(&dir).unwrap();
    let tensors = ck.tensors();
    let mut names: Vec<String> = Vec::new();
    for l in [0, 10, 20, 29] {
        let p = format!("model.text_model.layers.{l}");
        for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"]
        {
            names.push(format!("{p}.{n}.weight"));
        }
    }
    for l in [0, 6, 11] {
        let p = format!("model.vision_model.encoder.layers.{l}");
        for n in ["self_attn.q_proj", "mlp.fc1", "mlp.fc2"] {
            names.push(format!("{p}.{n}.weight"));
        }
    }
    println!("| weight | in | none | block-diagonal | kronecker | none g128 | kronecker g128 |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut sums = [0f64; 5];
    for name in &names {
        let t = &tensors[name];
        let (out, cols) = (t.shape[0], t.shape[1]);
        let w = t.encoding.decode_f32(t.bytes, &t.shape);
        let block = Rotation::new(cols, Construction::BlockDiagonal, Some(1)).unwrap();
        let kron = Rotation::new(cols, Construction::Kronecker, Some(1)).unwrap();
        let g = (cols % 128 == 0).then_some(128);
        let e = [
            rel_error(&w, out, cols, None, None),
            rel_error(&w, out, cols, Some(&block), None),
            rel_error(&w, out, cols, Some(&kron), None),
            rel_error(&w, out, cols, None, g),
            rel_error(&w, out, cols, Some(&kron), g),
        ];
        e.iter().zip(sums.iter_mut()).for_each(|(v, s)| *s += v.ln());
        let short = name
            .replace("model.text_model.layers.", "text.")
            .replace("model.vision_model.encoder.layers.", "vision.");
        println!(
            "| {short} | {cols} | {:.3e} | {:.3e} | {:.3e} | {:.3e} | {:.3e} |",
            e[0], e[1], e[2], e[3], e[4]
        );
    }
    let n = names.len() as f64;
    let gm: Vec<String> = sums.iter().map(|s| format!("{:.3e}", (s / n).exp())).collect();
    println!("| geometric mean | | {} |", gm.join(" | "));
    // the rotations must help on average (outlier columns spread out)
    assert!(sums[2] < sums[0] && sums[1] < sums[0]);
}

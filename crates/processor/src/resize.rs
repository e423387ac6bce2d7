//! Pillow's Lanczos resampling, reproduced bit for bit.
//!
//! Hugging Face's PIL image processor resizes every image with `PIL.Image.resize(size, LANCZOS)`
//! on 8-bit RGB data, so the tiles the model sees are exactly what Pillow's
//! `libImaging/Resample.c` computes. This module re-derives that algorithm:
//!
//! **Separable, two passes.** Each pass runs only when its size changes; the intermediate image
//! is rounded and clipped to `u8` between them. The horizontal pass runs first (over just the
//! source rows the vertical pass will read) unless the height loses more than twice as many
//! pixels as the width, `in_h − out_h > max(0, 2·(in_w − out_w))`: then the vertical pass runs
//! first (Pillow 13, python-pillow/Pillow#9549; earlier Pillow always went horizontal first, so
//! those resizes can differ from older Pillow by a level). Equal sizes return a copy.
//!
//! **Coefficients, per output position `i` of an axis `n_in → n_out`:**
//!
//! ```text
//! scale   = n_in / n_out                       (f64)
//! fs      = max(scale, 1)                      (the kernel widens when downscaling)
//! support = 3 · fs
//! center  = (i + 0.5) · scale
//! xmin    = max(0,    trunc(center − support + 0.5))
//! xmax    = min(n_in, trunc(center + support + 0.5))
//! w_j     = lanczos3((xmin + j − center + 0.5) · (1/fs))   for j in 0..xmax−xmin
//! w_j    /= Σ w                                 (skipped when Σ w = 0)
//! k_j     = trunc(w_j · 2²² ± 0.5)              (fixed point, PRECISION_BITS = 22,
//!                                                rounded away from zero)
//! ```
//!
//! with `lanczos3(x) = sinc(x)·sinc(x/3)` for `−3 ≤ x < 3` and 0 elsewhere,
//! `sinc(x) = sin(πx)/(πx)` (`sinc(0) = 1`).
//!
//! **Accumulation:** `out = clip8((2²¹ + Σ_j in[xmin+j]·k_j) >> 22)` in 32-bit integers, with an
//! arithmetic shift and clipping to `0..=255`.
//!
//! `sin` comes from the `libm` crate on every target, so native and wasm32 builds compute the
//! same coefficients (Rust's `f64::sin` would use the platform's libm natively).

use std::f64::consts::PI;

/// Fixed-point precision of Pillow's 8-bit resampler: `32 − 8 − 2`.
const PRECISION_BITS: u32 = 22;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * PI;
    libm::sin(x) / x
}

fn lanczos3(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
}

/// Fixed-point filter taps of one axis.
struct Taps {
    /// Per output position: first source index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` taps per output position (unused tail is zero).
    k: Vec<i32>,
    ksize: usize,
}

fn precompute_taps(in_size: usize, out_size: usize) -> Taps {
    // Pillow passes the box (0, 0, w, h) as C floats; `in1 - in0` is exact for any real size.
    let in0 = 0.0f64;
    let in1 = in_size as f32 as f64;
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = 3.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;

    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        // C casts truncate toward zero; negative values are clamped right after.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0f64;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let v = lanczos3(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
            *wx = v;
            ww += v;
        }
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let mut v = w[x];
            if ww != 0.0 {
                v /= ww;
            }
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            row[x] = if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin as usize, n));
    }
    Taps { bounds, k, ksize }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

#[inline]
fn accumulate(taps: &[i32], mut sample: impl FnMut(usize) -> u8) -> u8 {
    let mut acc: i32 = 1 << (PRECISION_BITS - 1);
    for (j, &kj) in taps.iter().enumerate() {
        acc = acc.wrapping_add((sample(j) as i32).wrapping_mul(kj));
    }
    clip8(acc)
}

/// Resize packed 8-bit pixels (`channels` interleaved bytes per pixel, rows top to bottom) with
/// Pillow's `Image.resize((out_w, out_h), Image.LANCZOS)` arithmetic.
///
/// # Panics
/// If a size is zero or `src.len() != in_w * in_h * channels`.
pub fn resize_lanczos(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    assert!(in_w > 0 && in_h > 0 && out_w > 0 && out_h > 0 && channels > 0, "empty image");
    assert_eq!(src.len(), in_w * in_h * channels, "pixel buffer does not match its size");
    let need_horizontal = in_w != out_w;
    let need_vertical = in_h != out_h;
    if !need_horizontal && !need_vertical {
        return src.to_vec();
    }
    if horizontal_first(in_w, in_h, out_w, out_h) {
        let vert = need_vertical.then(|| precompute_taps(in_h, out_h));
        // Only the source rows the vertical pass reads are resampled horizontally.
        let (row0, row1) = match &vert {
            Some(v) => (v.bounds[0].0, v.bounds[out_h - 1].0 + v.bounds[out_h - 1].1),
            None => (0, in_h),
        };
        let tmp;
        let (img, rows) = if need_horizontal {
            let horiz = precompute_taps(in_w, out_w);
            let band = &src[row0 * in_w * channels..row1 * in_w * channels];
            tmp = horizontal_pass(band, in_w, row1 - row0, channels, &horiz, out_w);
            (&tmp[..], row0)
        } else {
            (src, 0)
        };
        match vert {
            Some(v) => vertical_pass(img, out_w, channels, &v, rows),
            None => img.to_vec(),
        }
    } else {
        // Pillow ≥ 13: when the height shrinks by more than twice as many pixels as the width,
        // the vertical pass runs first (over every column of the source).
        let vert = precompute_taps(in_h, out_h);
        let tmp = vertical_pass(src, in_w, channels, &vert, 0);
        if need_horizontal {
            horizontal_pass(&tmp, in_w, out_h, channels, &precompute_taps(in_w, out_w), out_w)
        } else {
            tmp
        }
    }
}

/// Pillow 13's pass order: horizontal first unless the height loses more than twice as many
/// pixels as the width, `(in_h − out_h) > 0 && (in_h − out_h) > 2·(in_w − out_w)` (signed).
fn horizontal_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    !(dh > 0 && dh > dw * 2)
}

/// Resample each of `rows` rows of width `in_w` to `out_w` pixels.
fn horizontal_pass(
    src: &[u8],
    in_w: usize,
    rows: usize,
    channels: usize,
    taps: &Taps,
    out_w: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; rows * out_w * channels];
    for r in 0..rows {
        let line = &src[r * in_w * channels..(r + 1) * in_w * channels];
        let dst = &mut out[r * out_w * channels..(r + 1) * out_w * channels];
        for (xx, &(xmin, n)) in taps.bounds.iter().enumerate() {
            let k = &taps.k[xx * taps.ksize..xx * taps.ksize + n];
            for c in 0..channels {
                dst[xx * channels + c] = accumulate(k, |j| line[(xmin + j) * channels + c]);
            }
        }
    }
    out
}

/// Resample columns: output row `yy` reads source rows `bounds[yy].0 − row_offset ..` of `src`
/// (whose rows are `width · channels` bytes). Accumulates whole rows at a time, tap by tap in
/// the same order as Pillow, so the sums are identical.
fn vertical_pass(src: &[u8], width: usize, channels: usize, taps: &Taps, row_offset: usize) -> Vec<u8> {
    let stride = width * channels;
    let mut out = vec![0u8; taps.bounds.len() * stride];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, n)) in taps.bounds.iter().enumerate() {
        let k = &taps.k[yy * taps.ksize..yy * taps.ksize + n];
        let base = ymin - row_offset;
        acc.fill(1 << (PRECISION_BITS - 1));
        for (j, &kj) in k.iter().enumerate() {
            let row = &src[(base + j) * stride..(base + j + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a = a.wrapping_add((p as i32).wrapping_mul(kj));
            }
        }
        for (d, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy() {
        let px: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8).collect();
        assert_eq!(resize_lanczos(&px, 2, 3, 3, 2, 3), px);
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (n_in, n_out) in [(10, 3), (3, 10), (451, 384), (1, 7), (7, 1), (128, 128)] {
            let t = precompute_taps(n_in, n_out);
            for (i, &(_, n)) in t.bounds.iter().enumerate() {
                let s: i64 = t.k[i * t.ksize..i * t.ksize + n].iter().map(|&v| v as i64).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= n as i64, "{n_in}->{n_out} at {i}: {s}");
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let px = vec![200u8; 17 * 9 * 3];
        for (w, h) in [(5, 4), (40, 31), (1, 1), (17, 20)] {
            assert!(resize_lanczos(&px, 17, 9, 3, w, h).iter().all(|&v| v == 200));
        }
    }
}

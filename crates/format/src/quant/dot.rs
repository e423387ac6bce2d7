//! The integer dot product of step 6 of the contract, `Σ_j a_j · b_j` of i8 values in i32.
//!
//! The sum is exact in any order while it fits i32 (the manifest guarantees that per group), so
//! any lane split gives the same result as the plain loop. The loop adds with wrapping
//! arithmetic — identical to checked addition when nothing overflows, and the only form the
//! compiler vectorizes in builds with overflow checks. On x86_64 the same loop is also compiled
//! with AVX2 and AVX-512BW enabled, and the widest one the CPU supports is picked at run time.

/// `Σ_j a_j · b_j` over the shorter of the two slices.
#[inline(always)]
fn plain(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).fold(0i32, |s, (&x, &y)| s.wrapping_add(i32::from(x) * i32::from(y)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2(a: &[i8], b: &[i8]) -> i32 {
    plain(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
fn avx512(a: &[i8], b: &[i8]) -> i32 {
    plain(a, b)
}

/// `Σ_j a_j · b_j` in i32 (the caller guarantees it cannot overflow).
#[allow(unsafe_code)] // calling the target-feature variants once the CPU is known to have them
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU supports AVX-512BW (checked just above).
            return unsafe { avx512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { avx2(a, b) };
        }
    }
    plain(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_scalar_sum_at_every_length_and_extreme() {
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8 as i8
        };
        for n in [0, 1, 7, 31, 32, 33, 63, 64, 65, 127, 576, 1536, 12_288] {
            let a: Vec<i8> = (0..n).map(|_| next()).collect();
            let b: Vec<i8> = (0..n).map(|_| next()).collect();
            let want: i64 = a.iter().zip(&b).map(|(&x, &y)| x as i64 * y as i64).sum();
            assert_eq!(dot_i8(&a, &b) as i64, want, "length {n}");
            let lo = vec![-128i8; n];
            assert_eq!(dot_i8(&lo, &lo) as i64, 16_384 * n as i64, "length {n}, all −128");
        }
    }
}

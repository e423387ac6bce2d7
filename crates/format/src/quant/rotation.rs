//! Fast orthogonal (randomized) Hadamard rotations for any size the models use.
//!
//! A rotation of size `n = m · p` (`p` a power of two) is the orthogonal matrix
//!
//! ```text
//! R = c · (A ⊗ H_p) · D
//! ```
//!
//! where `H_p` is Sylvester's matrix, `D` a diagonal of signs (the identity when unrandomized)
//! and either
//!
//! * [`Construction::Kronecker`]: `A = H_m`, a Hadamard matrix of order `m` (Paley, see
//!   [`crate::quant::hadamard`]), `c = 1/√n`. Every output mixes every input. The smallest `m`
//!   with a construction is used: 576 = 36·16, 960 = 60·16, 768 = 12·64, 1536 = 12·128,
//!   2560 = 20·128, 3072 = 12·256, 48 = 12·4, and `m = 1` for powers of two.
//! * [`Construction::BlockDiagonal`]: `A = I_m` with `p = 2^(trailing zeros of n)`,
//!   `c = 1/√p`: `m` independent Walsh–Hadamard blocks of `p` (576 = 9 blocks of 64).
//!
//! **Choice: Kronecker** (the default of the compressor). Measured on the real SmolVLM-256M
//! weights (SmolLM2-135M text, 4 text and 3 vision layers, per-channel INT4 with the MSE clip
//! search, relative squared error `‖W − Ŵ‖²/‖W‖²` after rotating the input side; the test
//! `hadamard_quality` in the compressor prints the table): geometric mean 1.493e-2 without
//! rotation, 1.289e-2 block-diagonal, 1.255e-2 Kronecker. The difference is in the layers with
//! outlier input channels: text `o_proj` 1.52e-2 / 1.60e-2 / 1.45e-2 / 1.45e-2 (layers 0, 10, 20,
//! 29) block-diagonal against 1.22e-2 – 1.25e-2 Kronecker (the Gaussian floor), because a block
//! of 64 only spreads an outlier over its own block. The vision weights have no outlier
//! channels (no construction changes them). The Kronecker core costs `m` adds per value
//! (36 for 576), against `log₂ n` butterflies.
//!
//! Index `i` of a vector is `(a, b)` with `i = a·p + b`, so `(A ⊗ H_p)[(a,b),(a',b')] =
//! A[a][a'] · H_p[b][b']`.
//!
//! # Exact order of operations (the contract for online transforms)
//!
//! Applied to one vector `x` of `n` values in a float type (f32 at run time):
//!
//! 1. **signs**: `x_i ← −x_i` where `D_ii = −1`;
//! 2. **Walsh–Hadamard** on each block `x[a·p .. a·p+p]`: for `h = 1, 2, 4, …, p/2`, for every
//!    `j` with `j & h = 0`: `(x_j, x_{j+h}) ← (x_j + x_{j+h}, x_j − x_{j+h})` (block-relative
//!    `j`); each butterfly reads only the previous stage, so any parallel schedule of a stage
//!    gives the same values;
//! 3. **core** (Kronecker with `m > 1` only): for each `b`, `y_a = Σ_{a'} A[a][a'] · x_{a'·p+b}`
//!    accumulated left to right starting from `A[a][0]·x_b` (entries are ±1, so each term is an
//!    exact add or subtract);
//! 4. **scale**: `x_i ← x_i · c` with `c` the f32 (or f64) rounding of the f64 value `1/√(n or p)`
//!    ([`Rotation::scale_f32`]).
//!
//! Every step uses only correctly rounded additions, subtractions and one multiplication, so a
//! WGSL kernel following this order reproduces the CPU values bit for bit.
//!
//! # Signs
//!
//! `D` comes from a 32-bit seed through SplitMix64: with `state = seed` (as u64), for
//! `i = 0, 1, …`: `state += 0x9E3779B97F4A7C15`; `z = state`; `z = (z ^ (z >> 30)) ·
//! 0xBF58476D1CE4E5B9`; `z = (z ^ (z >> 27)) · 0x94D049BB133111EB`; `z ^= z >> 31` (all wrapping,
//! mod 2⁶⁴); `D_ii = −1` when bit 63 of `z` is set.

use std::ops::{Add, Mul, Neg, Sub};

use serde::{Deserialize, Serialize};

use crate::quant::error::QuantError;
use crate::quant::hadamard::hadamard;

/// Which orthogonal structure a rotation has (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Construction {
    Kronecker,
    BlockDiagonal,
}

impl Construction {
    /// The construction a rotation of `n` values gets when `self` is wanted: Kronecker needs a
    /// Hadamard core for some split `n = m · 2^k` ([`crate::quant::hadamard`]); where none
    /// exists (SigLIP-so400m's MLP width 4304 = 16·269: no order 269·2^j has a construction) it
    /// is block-diagonal instead, `m` Walsh–Hadamard blocks of the largest power of two dividing
    /// `n`, which exists for every `n > 0`. The manifest records each rotation's construction.
    pub fn available_for(self, n: usize) -> Construction {
        match self {
            Construction::Kronecker if Rotation::new(n, self, None).is_err() => Construction::BlockDiagonal,
            other => other,
        }
    }
}

/// The float types a rotation applies to (its arithmetic is `+`, `−`, negation and `·`).
pub trait Real:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Neg<Output = Self>
{
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// The SplitMix64 generator (see the module documentation); also the compressor's source of
/// reproducible randomness.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `(0, 1)`: the top 53 bits, centred in their interval.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Fisher–Yates shuffle: for `i` from the last index down to 1, swap item `i` with item
    /// `next_u64() mod (i + 1)`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// The sign diagonal of `seed` (`true` = negate), see the module documentation.
pub fn seeded_signs(seed: u32, n: usize) -> Vec<bool> {
    let mut rng = SplitMix64(seed as u64);
    (0..n).map(|_| rng.next_u64() >> 63 == 1).collect()
}

/// A rotation `R = c · (A ⊗ H_p) · D` of size `n = m·p`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotation {
    construction: Construction,
    m: usize,
    p: usize,
    /// `A` row-major (`m × m`, ±1) for the Kronecker construction with `m > 1`.
    core: Option<Vec<i8>>,
    /// `D`: `true` negates; empty for an unrandomized rotation.
    signs: Vec<bool>,
    seed: Option<u32>,
}

impl Rotation {
    /// The rotation of size `n` with the given structure, randomized by `seed` when given.
    pub fn new(n: usize, construction: Construction, seed: Option<u32>) -> Result<Self, QuantError> {
        if n == 0 {
            return Err(QuantError::NoHadamard(n));
        }
        let twos = n.trailing_zeros();
        let (m, p, core) = match construction {
            Construction::BlockDiagonal => (n >> twos, 1usize << twos, None),
            Construction::Kronecker => (0..=twos)
                .rev()
                .find_map(|k| {
                    let m = n >> k;
                    hadamard(m).map(|h| (m, 1usize << k, (m > 1).then_some(h)))
                })
                .ok_or(QuantError::NoHadamard(n))?,
        };
        let signs = seed.map(|s| seeded_signs(s, n)).unwrap_or_default();
        Ok(Self { construction, m, p, core, signs, seed })
    }

    pub fn size(&self) -> usize {
        self.m * self.p
    }

    pub fn construction(&self) -> Construction {
        self.construction
    }

    pub fn seed(&self) -> Option<u32> {
        self.seed
    }

    /// `(m, p)`: the order of `A` and of the Walsh–Hadamard factor.
    pub fn factors(&self) -> (usize, usize) {
        (self.m, self.p)
    }

    /// The normalisation `c` as f64 (`1/√n` or `1/√p`).
    pub fn scale_f64(&self) -> f64 {
        let k = if self.construction == Construction::Kronecker { self.size() } else { self.p };
        1.0 / (k as f64).sqrt()
    }

    /// The f32 normalisation constant a kernel multiplies by in step 4.
    pub fn scale_f32(&self) -> f32 {
        self.scale_f64() as f32
    }

    /// Apply `R` in place to one vector of [`Self::size`] values, in the contract's order.
    pub fn apply<T: Real>(&self, x: &mut [T]) -> Result<(), QuantError> {
        let n = self.size();
        if x.len() != n {
            return Err(QuantError::LengthMismatch { what: "rotated vector", expected: n, found: x.len() });
        }
        for (v, &neg) in x.iter_mut().zip(&self.signs) {
            if neg {
                *v = -*v;
            }
        }
        for block in x.chunks_exact_mut(self.p) {
            walsh_hadamard(block);
        }
        if let Some(core) = &self.core {
            let (m, p) = (self.m, self.p);
            let mut column = vec![T::from_f64(0.0); m];
            for b in 0..p {
                for (a, out) in column.iter_mut().enumerate() {
                    let row = &core[a * m..(a + 1) * m];
                    let first = x[b];
                    let mut acc = if row[0] > 0 { first } else { -first };
                    for (a2, &s) in row.iter().enumerate().skip(1) {
                        let v = x[a2 * p + b];
                        acc = if s > 0 { acc + v } else { acc - v };
                    }
                    *out = acc;
                }
                for (a, &v) in column.iter().enumerate() {
                    x[a * p + b] = v;
                }
            }
        }
        let c = T::from_f64(self.scale_f64());
        for v in x.iter_mut() {
            *v = *v * c;
        }
        Ok(())
    }

    /// Apply `R` to every row of a row-major `[rows, size]` buffer.
    pub fn apply_rows<T: Real>(&self, data: &mut [T]) -> Result<(), QuantError> {
        let n = self.size();
        if !data.len().is_multiple_of(n) {
            return Err(QuantError::LengthMismatch {
                what: "rotated rows",
                expected: data.len().next_multiple_of(n),
                found: data.len(),
            });
        }
        data.chunks_exact_mut(n).try_for_each(|row| self.apply(row))
    }

    /// `R` as an explicit row-major `n × n` f64 matrix, built entry by entry from its definition
    /// `c · A[a][a'] · H_p[b][b'] · D_jj` (not by running the fast transform).
    pub fn matrix(&self) -> Vec<f64> {
        let (m, p, n) = (self.m, self.p, self.size());
        let c = self.scale_f64();
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let (a, b, a2, b2) = (i / p, i % p, j / p, j % p);
                let core = match &self.core {
                    Some(h) => h[a * m + a2] as f64,
                    None => f64::from(u8::from(a == a2)),
                };
                let walsh = if (b & b2).count_ones() % 2 == 0 { 1.0 } else { -1.0 };
                let sign = if self.signs.get(j).copied().unwrap_or(false) { -1.0 } else { 1.0 };
                out[i * n + j] = c * core * walsh * sign;
            }
        }
        out
    }
}

/// Unnormalised in-place Walsh–Hadamard transform of a power-of-two block (step 2).
fn walsh_hadamard<T: Real>(x: &mut [T]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            for j in start..start + h {
                let (u, v) = (x[j], x[j + h]);
                x[j] = u + v;
                x[j + h] = u - v;
            }
        }
        h *= 2;
    }
}

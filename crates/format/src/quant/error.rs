//! Typed errors of the quantization contract.

use thiserror::Error;

/// Everything that can be wrong with a quantization recipe, a packed tensor or a rotation.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantError {
    #[error("unsupported bit width {0} (supported: 4, 8)")]
    UnsupportedBits(u32),
    #[error("unknown bits recipe {0:?} (known: w8a8, w4a8, w4a4)")]
    UnknownScheme(String),
    #[error("group size {group} is not supported for {bits}-bit {what} with {cols} input columns ({reason})")]
    UnsupportedGroup { what: &'static str, bits: u32, group: usize, cols: usize, reason: &'static str },
    #[error("clip ratio {0} is outside (0, 1]")]
    BadClipRatio(f32),
    #[error("value {value} does not fit a {bits}-bit signed integer")]
    ValueOutOfRange { value: i32, bits: u32 },
    #[error("{what}: expected {expected} values, found {found}")]
    LengthMismatch { what: &'static str, expected: usize, found: usize },
    #[error("a packed {bits}-bit tensor needs rows of at least one value")]
    EmptyRow { bits: u32 },
    #[error("a packed {bits}-bit row of {cols} values has non-zero padding in its last word")]
    NonZeroPadding { bits: u32, cols: usize },
    #[error("no orthogonal Hadamard construction for size {0}")]
    NoHadamard(usize),
    #[error("{cols} input columns at w{bits_w}a{bits_a} could overflow the i32 accumulator")]
    AccumulatorOverflow { cols: usize, bits_w: u32, bits_a: u32 },
    #[error("scale {index} is {value}, scales must be finite and non-negative")]
    BadScale { index: usize, value: f32 },
    #[error("online transform of size {size} does not match the layer input of {cols} columns")]
    TransformSize { size: usize, cols: usize },
}

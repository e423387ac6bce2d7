//! How a tensor's bytes encode its values.
//!
//! Version 1 knows three dense little-endian encodings. Version 2 adds low-rank factor
//! tensors (ordinary dense tensors with their own names); version 3 adds the packed integer
//! encodings `i8` and `i4` of quantized weights (layouts in [`crate::quant::pack`]; their scales
//! are separate f32 or f16 tensors, see [`crate::quant::section`]). An encoding tag this reader does not know is reported as
//! [`FormatError::UnknownEncoding`] naming the tag and the tensor, never as a generic parse error.

use std::fmt;

use crate::error::{FormatError, Result};
use crate::quant::pack::{Bits, unpack};

/// An element encoding. Values are stored row-major, little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    F32,
    F16,
    BF16,
    /// Packed signed 8-bit integers, four per `u32` word.
    I8,
    /// Packed signed 4-bit integers, eight per `u32` word (interleaved nibbles).
    I4,
}

impl Encoding {
    /// Parse the manifest tag; `tensor` names the tensor for the error message.
    pub fn parse(tag: &str, tensor: &str) -> Result<Self> {
        match tag {
            "f32" => Ok(Encoding::F32),
            "f16" => Ok(Encoding::F16),
            "bf16" => Ok(Encoding::BF16),
            "i8" => Ok(Encoding::I8),
            "i4" => Ok(Encoding::I4),
            other => {
                Err(FormatError::UnknownEncoding { tensor: tensor.to_string(), encoding: other.to_string() })
            }
        }
    }

    pub fn tag(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::F16 => "f16",
            Encoding::BF16 => "bf16",
            Encoding::I8 => "i8",
            Encoding::I4 => "i4",
        }
    }

    /// The integer width of a packed encoding (`None` for float encodings).
    pub fn packed_bits(self) -> Option<Bits> {
        match self {
            Encoding::I8 => Some(Bits::Int8),
            Encoding::I4 => Some(Bits::Int4),
            Encoding::F32 | Encoding::F16 | Encoding::BF16 => None,
        }
    }

    /// Byte length of a tensor of `shape` (packed rows are padded to whole `u32` words).
    pub fn byte_len(self, shape: &[usize]) -> usize {
        let numel: usize = shape.iter().product();
        match self {
            Encoding::F32 => numel * 4,
            Encoding::F16 | Encoding::BF16 => numel * 2,
            Encoding::I8 | Encoding::I4 => self.packed_bits().map_or(0, |b| {
                let cols = shape.last().copied().unwrap_or(1);
                numel.checked_div(cols).map_or(0, |rows| b.packed_len(rows, cols))
            }),
        }
    }

    /// Check that `shape` can be stored: packed encodings need non-empty rows (last dimension).
    pub fn check_shape(self, shape: &[usize]) -> Result<()> {
        if let Some(bits) = self.packed_bits() {
            bits.check_row(shape.last().copied().unwrap_or(0))?;
        }
        Ok(())
    }

    /// Decode `bytes`, a tensor of `shape`, into f32 values (exact: f16 and bf16 widen without
    /// rounding; packed integers decode to their integer values, without scales and without the
    /// row padding; packed bytes that do not match `shape`, which a valid tensor never has,
    /// decode to nothing).
    pub fn decode_f32(self, bytes: &[u8], shape: &[usize]) -> Vec<f32> {
        match self {
            Encoding::F32 => {
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Encoding::F16 => {
                bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            Encoding::BF16 => {
                bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            Encoding::I8 | Encoding::I4 => {
                let bits = self.packed_bits().unwrap_or(Bits::Int8);
                let cols = shape.last().copied().unwrap_or(1);
                let rows = shape.iter().product::<usize>().checked_div(cols).unwrap_or(0);
                unpack(bits, bytes, rows, cols).unwrap_or_default().into_iter().map(f32::from).collect()
            }
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tag_names_tag_and_tensor() {
        let err = Encoding::parse("q4_0", "lm_head.weight").unwrap_err();
        match err {
            FormatError::UnknownEncoding { tensor, encoding } => {
                assert_eq!(tensor, "lm_head.weight");
                assert_eq!(encoding, "q4_0");
            }
            other => panic!("wrong error {other:?}"),
        }
    }

    #[test]
    fn decode_widens_exactly() {
        let v = [1.5f32, -2.25, 65504.0];
        let f16: Vec<u8> = v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
        assert_eq!(Encoding::F16.decode_f32(&f16, &[f16.len() / 2]), v);
        let bf16: Vec<u8> = v[..2].iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect();
        assert_eq!(Encoding::BF16.decode_f32(&bf16, &[bf16.len() / 2]), v[..2]);
        for e in [Encoding::F32, Encoding::F16, Encoding::BF16, Encoding::I8, Encoding::I4] {
            assert_eq!(Encoding::parse(e.tag(), "t").unwrap(), e);
        }
    }
}

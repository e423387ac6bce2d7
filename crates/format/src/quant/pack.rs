//! Integer widths and the packed layouts of INT8 and INT4 tensors.
//!
//! Both layouts are row-major over the logical `[out, in]` shape, little-endian, and every row
//! starts on a 32-bit word boundary (`in` must be a multiple of 4 values for INT8 and of 8 for
//! INT4), so a WGSL kernel reads a row as whole `u32` words. Values are two's complement.
//!
//! **INT8** (`"i8"`): word `w` of a row holds values `4w … 4w+3`, value `4w+b` in bits
//! `8b … 8b+7`. This is exactly the component order of WGSL's `dot4I8Packed` and `unpack4xI8`
//! (component `b` = bits `8b … 8b+7`), so a kernel feeds a weight word straight to
//! `dot4I8Packed(word, activation_word)`.
//!
//! **INT4** (`"i4"`): word `w` of a row holds values `8w … 8w+7`. Byte `b` (bits `8b … 8b+7`)
//! holds value `8w+b` in its low nibble (bits `8b … 8b+3`) and value `8w+4+b` in its high nibble
//! (bits `8b+4 … 8b+7`). With this interleaving two masks give `dot4I8Packed` operands whose
//! lanes are the values times 16, already sign-extended:
//!
//! ```text
//! lo = (word << 4u) & 0xF0F0F0F0u   // lanes 16·v[8w+0..8w+3]
//! hi =  word        & 0xF0F0F0F0u   // lanes 16·v[8w+4..8w+7]
//! dot = (dot4I8Packed(lo, a_lo) + dot4I8Packed(hi, a_hi)) >> 4   // exact: a multiple of 16
//! ```
//!
//! The quantizers only produce the symmetric ranges `[-127, 127]` and `[-7, 7]` (see
//! [`Bits::qmax`]); the layouts can also hold −128 and −8.

use crate::quant::error::QuantError;

/// A signed integer width of weights or activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bits {
    Int4,
    Int8,
}

impl Bits {
    pub fn from_bits(bits: u32) -> Result<Self, QuantError> {
        match bits {
            4 => Ok(Bits::Int4),
            8 => Ok(Bits::Int8),
            other => Err(QuantError::UnsupportedBits(other)),
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            Bits::Int4 => 4,
            Bits::Int8 => 8,
        }
    }

    /// Largest magnitude of the symmetric quantization grid: `2^(bits−1) − 1` (7 or 127).
    pub fn qmax(self) -> i32 {
        (1 << (self.bits() - 1)) - 1
    }

    /// Smallest value the packed layout can store (−8 or −128).
    pub fn min_stored(self) -> i32 {
        -(1 << (self.bits() - 1))
    }

    /// Values per 32-bit word.
    pub fn per_word(self) -> usize {
        (32 / self.bits()) as usize
    }

    /// Packed byte length of `numel` values.
    pub fn packed_len(self, numel: usize) -> usize {
        numel * self.bits() as usize / 8
    }

    /// Check that a (non-empty) row of `cols` values fills whole words.
    pub fn check_row(self, cols: usize) -> Result<(), QuantError> {
        if cols == 0 || !cols.is_multiple_of(self.per_word()) {
            return Err(QuantError::RowNotWordAligned { bits: self.bits(), cols, multiple: self.per_word() });
        }
        Ok(())
    }

    fn check_value(self, v: i8) -> Result<(), QuantError> {
        let v = v as i32;
        if v < self.min_stored() || v > -self.min_stored() - 1 {
            return Err(QuantError::ValueOutOfRange { value: v, bits: self.bits() });
        }
        Ok(())
    }
}

/// Pack `values` (row-major, rows of `cols`) in the layout of `bits`.
pub fn pack(bits: Bits, values: &[i8], cols: usize) -> Result<Vec<u8>, QuantError> {
    bits.check_row(cols)?;
    if cols == 0 || !values.len().is_multiple_of(cols) {
        return Err(QuantError::LengthMismatch {
            what: "packed tensor (whole rows)",
            expected: values.len().next_multiple_of(cols.max(1)),
            found: values.len(),
        });
    }
    for &v in values {
        bits.check_value(v)?;
    }
    Ok(match bits {
        Bits::Int8 => values.iter().map(|&v| v as u8).collect(),
        Bits::Int4 => values
            .chunks_exact(8)
            .flat_map(|c| (0..4).map(move |b| (c[b] as u8 & 0x0F) | ((c[b + 4] as u8 & 0x0F) << 4)))
            .collect(),
    })
}

/// Unpack `numel` values from `bytes` in the layout of `bits` (the inverse of [`pack`]).
pub fn unpack(bits: Bits, bytes: &[u8], numel: usize) -> Result<Vec<i8>, QuantError> {
    if bits.packed_len(numel) != bytes.len() || !numel.is_multiple_of(bits.per_word()) {
        return Err(QuantError::LengthMismatch {
            what: "packed bytes",
            expected: bits.packed_len(numel.next_multiple_of(bits.per_word())),
            found: bytes.len(),
        });
    }
    Ok(match bits {
        Bits::Int8 => bytes.iter().map(|&b| b as i8).collect(),
        Bits::Int4 => {
            // Sign-extend a nibble by moving it to the top of a byte and shifting back.
            let nib = |n: u8| ((n << 4) as i8) >> 4;
            let mut out = vec![0i8; numel];
            for (w, word) in bytes.chunks_exact(4).enumerate() {
                for (b, &byte) in word.iter().enumerate() {
                    out[8 * w + b] = nib(byte & 0x0F);
                    out[8 * w + 4 + b] = nib(byte >> 4);
                }
            }
            out
        }
    })
}

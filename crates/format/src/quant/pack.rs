//! Integer widths and the packed layouts of INT8 and INT4 tensors.
//!
//! Both layouts are row-major over the logical `[out, in]` shape, little-endian, and every row
//! starts on a 32-bit word boundary: a row of `in` values occupies `⌈in / per_word⌉` words
//! (`per_word` = 4 for INT8, 8 for INT4), its last word padded with zeros when `in` is not a
//! multiple of `per_word` (a low-rank factor's rank need not be). A WGSL kernel reads a row as
//! whole `u32` words; it pads the activation's last word with zeros too, and zero lanes add
//! nothing to `dot4I8Packed`. Values are two's complement.
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

    /// 32-bit words of one packed row of `cols` values (the last one zero-padded).
    pub fn row_words(self, cols: usize) -> usize {
        cols.div_ceil(self.per_word())
    }

    /// Packed byte length of `rows` rows of `cols` values.
    pub fn packed_len(self, rows: usize, cols: usize) -> usize {
        rows * self.row_words(cols) * 4
    }

    /// Check that a row is not empty.
    pub fn check_row(self, cols: usize) -> Result<(), QuantError> {
        if cols == 0 {
            return Err(QuantError::EmptyRow { bits: self.bits() });
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
    bits.check_row(cols)?; // (rejects cols == 0)
    if !values.len().is_multiple_of(cols) {
        return Err(QuantError::LengthMismatch {
            what: "packed tensor (whole rows)",
            expected: values.len().next_multiple_of(cols),
            found: values.len(),
        });
    }
    for &v in values {
        bits.check_value(v)?;
    }
    let padded = bits.row_words(cols) * bits.per_word();
    let mut out = Vec::with_capacity(bits.packed_len(values.len() / cols, cols));
    let mut row = vec![0i8; padded];
    for r in values.chunks_exact(cols) {
        row[..cols].copy_from_slice(r);
        match bits {
            Bits::Int8 => out.extend(row.iter().map(|&v| v as u8)),
            Bits::Int4 => out.extend(
                row.chunks_exact(8)
                    .flat_map(|c| (0..4).map(move |b| (c[b] as u8 & 0x0F) | ((c[b + 4] as u8 & 0x0F) << 4))),
            ),
        }
    }
    Ok(out)
}

/// Unpack `rows` rows of `cols` values from `bytes` in the layout of `bits` (the inverse of
/// [`pack`]); a row's padding must be zero.
pub fn unpack(bits: Bits, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>, QuantError> {
    bits.check_row(cols)?;
    if bits.packed_len(rows, cols) != bytes.len() {
        return Err(QuantError::LengthMismatch {
            what: "packed bytes",
            expected: bits.packed_len(rows, cols),
            found: bytes.len(),
        });
    }
    // Sign-extend a nibble by moving it to the top of a byte and shifting back.
    let nib = |n: u8| ((n << 4) as i8) >> 4;
    let row_bytes = bits.row_words(cols) * 4;
    let mut row = vec![0i8; bits.row_words(cols) * bits.per_word()];
    let mut out = Vec::with_capacity(rows * cols);
    for packed in bytes.chunks_exact(row_bytes) {
        match bits {
            Bits::Int8 => row.iter_mut().zip(packed).for_each(|(v, &b)| *v = b as i8),
            Bits::Int4 => {
                for (w, word) in packed.chunks_exact(4).enumerate() {
                    for (b, &byte) in word.iter().enumerate() {
                        row[8 * w + b] = nib(byte & 0x0F);
                        row[8 * w + 4 + b] = nib(byte >> 4);
                    }
                }
            }
        }
        if row[cols..].iter().any(|&v| v != 0) {
            return Err(QuantError::NonZeroPadding { bits: bits.bits(), cols });
        }
        out.extend_from_slice(&row[..cols]);
    }
    Ok(out)
}

//! The manifest's `quantization` section (format v3): the scheme, the residual rotation fused
//! offline, and per quantized layer everything its kernel needs — weight bits and grouping,
//! activation bits and clip ratio, and the online transforms in the order they apply.

use serde::{Deserialize, Serialize};

use crate::quant::activation::ActivationQuant;
use crate::quant::error::QuantError;
use crate::quant::linear::check_group;
use crate::quant::pack::Bits;
use crate::quant::rotation::{Construction, Rotation};

/// A bits recipe: weight and activation widths of the quantized linear layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    W8A8,
    W4A8,
    W4A4,
}

impl Scheme {
    pub const ALL: [Scheme; 3] = [Scheme::W8A8, Scheme::W4A8, Scheme::W4A4];

    pub fn parse(s: &str) -> Result<Self, QuantError> {
        Self::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| QuantError::UnknownScheme(s.to_string()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::W8A8 => "w8a8",
            Scheme::W4A8 => "w4a8",
            Scheme::W4A4 => "w4a4",
        }
    }

    pub fn weight_bits(self) -> Bits {
        match self {
            Scheme::W8A8 => Bits::Int8,
            Scheme::W4A8 | Scheme::W4A4 => Bits::Int4,
        }
    }

    pub fn activation_bits(self) -> Bits {
        match self {
            Scheme::W8A8 | Scheme::W4A8 => Bits::Int8,
            Scheme::W4A4 => Bits::Int4,
        }
    }
}

/// A rotation as the manifest records it; [`RotationSpec::build`] gives the transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationSpec {
    pub construction: Construction,
    pub size: usize,
    /// Seed of the sign diagonal (see [`crate::quant::rotation`]); `null` = no signs.
    pub seed: Option<u32>,
}

impl RotationSpec {
    pub fn build(&self) -> Result<Rotation, QuantError> {
        Rotation::new(self.size, self.construction, self.seed)
    }
}

/// Activation quantization of one layer as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationSpec {
    pub bits: u32,
    pub clip_ratio: f32,
}

impl ActivationSpec {
    pub fn build(&self) -> Result<ActivationQuant, QuantError> {
        ActivationQuant::new(Bits::from_bits(self.bits)?, self.clip_ratio)
    }
}

/// One quantized linear layer. Its packed weight is the tensor `weight` (encoding `i8` or `i4`,
/// logical shape `[out, in]`); its scales are the tensor [`scale_name`]`(weight)` with shape
/// `[out]` or `[out, in / group]`, in `f32` or `f16` (two per `u32` word, element `2k` in the low
/// half, as WGSL's `unpack2x16float` reads them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedLayer {
    pub weight: String,
    pub weight_bits: u32,
    /// Input columns per weight scale; `null` = one scale per output channel.
    pub group: Option<usize>,
    pub activation: ActivationSpec,
    /// Applied to each input token, in this order, before it is quantized.
    pub online: Vec<RotationSpec>,
}

/// Name of the scale tensor of a packed weight tensor.
pub fn scale_name(weight: &str) -> String {
    format!("{weight}_scale")
}

impl QuantizedLayer {
    /// Check the layer against its weight's input width `cols`: bits, grouping, clip ratio,
    /// online transform sizes and constructions.
    pub fn validate(&self, cols: usize) -> Result<(), QuantError> {
        let wb = Bits::from_bits(self.weight_bits)?;
        wb.check_row(cols)?;
        check_group(wb, self.group, cols)?;
        let act = self.activation.build()?;
        let group = self.group.unwrap_or(cols) as u64;
        if group * wb.qmax() as u64 * act.bits().qmax() as u64 > i32::MAX as u64 {
            return Err(QuantError::AccumulatorOverflow {
                cols,
                bits_w: wb.bits(),
                bits_a: act.bits().bits(),
            });
        }
        for r in &self.online {
            if r.size != cols {
                return Err(QuantError::TransformSize { size: r.size, cols });
            }
            r.build()?;
        }
        Ok(())
    }

    /// Shape of the scale tensor for a weight `[out, cols]`.
    pub fn scale_shape(&self, out: usize, cols: usize) -> Vec<usize> {
        match self.group {
            Some(g) => vec![out, cols / g.max(1)],
            None => vec![out],
        }
    }
}

/// The `quantization` section of a v3 manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// `w8a8`, `w4a8` or `w4a4` (the default widths; layers record their own).
    pub scheme: String,
    /// The rotation fused offline into the residual stream (embeddings, connector output, input
    /// and output projections, lm_head); informational, nothing applies it at run time.
    pub residual_rotation: Option<RotationSpec>,
    pub layers: Vec<QuantizedLayer>,
    /// Quantized lookup tables (the token embeddings); absent in manifests without any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<QuantizedTable>,
    /// The damping of the GPTQ error compensation that chose the text decoder's integers
    /// (absent: the clip search's round-to-nearest); informational, the arithmetic is the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gptq_damping: Option<f64>,
}

/// A quantized lookup table `[rows, cols]` (token embeddings): symmetric integers of `bits`,
/// packed like a weight, with one scale per row in the tensor [`scale_name`]`(tensor)`
/// (shape `[rows]`, f32 or f16). Row `t` reads `e[j] = f32(q[t][j]) · s[t]`, one correctly
/// rounded f32 multiply ([`QuantizedTable::lookup`]). A tied table may also be listed as a
/// layer (the tied `lm_head`): the same integers and scales serve both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedTable {
    pub tensor: String,
    pub bits: u32,
}

impl QuantizedTable {
    /// The rows `ids` of a table with `values` (`[rows, cols]`) and per-row `scales`.
    pub fn lookup(values: &[i8], scales: &[f32], cols: usize, ids: &[usize]) -> Vec<f32> {
        ids.iter()
            .flat_map(|&t| values[t * cols..(t + 1) * cols].iter().map(move |&q| q as f32 * scales[t]))
            .collect()
    }
}

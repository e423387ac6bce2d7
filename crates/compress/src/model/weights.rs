//! Where the CPU model's weights come from: a Hugging Face checkpoint or a PocketVLM model
//! directory (v1 dense or v2 with low-rank factors), widened to f32.

use std::collections::BTreeMap;

use pocketvlm_format::{Encoding, FormatError, ModelData};

use crate::checkpoint::RawTensor;
use crate::error::{CompressError, Result};

/// A named tensor store that yields f32 values and the tensor's shape.
pub trait WeightStore {
    fn load(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)>;
}

impl WeightStore for BTreeMap<String, RawTensor<'_>> {
    fn load(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.get(name).ok_or_else(|| FormatError::MissingTensor { name: name.to_string() })?;
        Ok((t.shape.clone(), t.encoding.decode_f32(t.bytes, &t.shape)))
    }
}

impl WeightStore for ModelData {
    fn load(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let entry = self.manifest.tensor(name)?;
        Ok((entry.shape.clone(), self.tensor_f32(name)?))
    }
}

/// An in-memory store (tests and freshly computed factors).
pub type MemoryStore = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The shape and values of `name` in `store`, or a typed error naming the missing tensor.
pub fn stored<'a>(store: &'a MemoryStore, name: &str) -> Result<&'a (Vec<usize>, Vec<f32>)> {
    Ok(store.get(name).ok_or_else(|| FormatError::MissingTensor { name: name.to_string() })?)
}

/// [`stored`], to change in place.
pub fn stored_mut<'a>(store: &'a mut MemoryStore, name: &str) -> Result<&'a mut (Vec<usize>, Vec<f32>)> {
    Ok(store.get_mut(name).ok_or_else(|| FormatError::MissingTensor { name: name.to_string() })?)
}

impl WeightStore for MemoryStore {
    fn load(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        stored(self, name).cloned()
    }
}

/// A store whose tensors in `over` replace (or add to) those of `base`.
pub struct Overlay<'a> {
    pub base: &'a dyn WeightStore,
    pub over: MemoryStore,
}

impl WeightStore for Overlay<'_> {
    fn load(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        match self.over.get(name) {
            Some(t) => Ok(t.clone()),
            None => self.base.load(name),
        }
    }
}

/// A float encoding's rejection of a packed one: packed integers come from the quantizer
/// ([`crate::quant`]), never from rounding floats through an encoding.
fn float_only(encoding: Encoding) -> CompressError {
    CompressError::BadOptions {
        recipe: "float tensors".into(),
        what: format!("a float encoding (f32, f16, bf16), not {encoding}"),
    }
}

/// Round f32 values through a float `encoding` (what storing and reloading them does).
pub fn round_through(encoding: Encoding, values: &[f32]) -> Result<Vec<f32>> {
    Ok(match encoding {
        Encoding::F32 => values.to_vec(),
        Encoding::F16 => values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        Encoding::BF16 => values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
        Encoding::I8 | Encoding::I4 => return Err(float_only(encoding)),
    })
}

/// Encode f32 values as little-endian bytes in a float `encoding`.
pub fn encode(encoding: Encoding, values: &[f32]) -> Result<Vec<u8>> {
    Ok(match encoding {
        Encoding::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Encoding::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        Encoding::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        Encoding::I8 | Encoding::I4 => return Err(float_only(encoding)),
    })
}

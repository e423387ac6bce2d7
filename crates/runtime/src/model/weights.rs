//! Uploading a model's tensors: each one once, as the kernel that reads it wants it.
//!
//! Matrices (linear weights, the embedding table, `lm_head`) keep their stored encoding: f32,
//! f16 or bf16 floats (widened in the kernels) or the packed integers and scales of the integer
//! contract, so GPU weight memory is the download's size. Vectors and the small vision-embedding
//! tensors (norm weights, biases, the patch and position embeddings: under 1 % of a model) are
//! widened to f32 once at load (exact) for the kernels that read only f32.

use std::collections::HashMap;
use std::sync::Mutex;

use pocketvlm_format::quant::{Bits, QuantizedLayer, QuantizedTable, scale_name};
use pocketvlm_format::{Encoding, FormatError, ModelData};

use crate::device::Gpu;
use crate::error::{Result, RuntimeError};
use crate::kernels::quant::{QuantWeightsGpu, WeightLayout};
use crate::tensor::Tensor;

/// Uploads tensors of one model directory, sharing a tensor used twice (a tied `lm_head`).
pub struct WeightLoader<'a> {
    pub gpu: &'a Gpu,
    data: &'a ModelData,
    layers: HashMap<&'a str, &'a QuantizedLayer>,
    tables: HashMap<&'a str, &'a QuantizedTable>,
    uploaded: Mutex<HashMap<String, Tensor>>,
    /// Bytes of the quantized weights' tiled integers uploaded, by label.
    tiled: Mutex<HashMap<String, u64>>,
}

impl<'a> WeightLoader<'a> {
    pub fn new(gpu: &'a Gpu, data: &'a ModelData) -> Self {
        let q = data.manifest.quantization.as_ref();
        let layers = q.map(|q| q.layers.iter().map(|l| (l.weight.as_str(), l)).collect()).unwrap_or_default();
        let tables = q.map(|q| q.tables.iter().map(|t| (t.tensor.as_str(), t)).collect()).unwrap_or_default();
        Self { gpu, data, layers, tables, uploaded: Mutex::new(HashMap::new()), tiled: Mutex::default() }
    }

    /// The quantized layer whose packed weight is `name`, if any.
    pub fn quantized_layer(&self, name: &str) -> Option<&'a QuantizedLayer> {
        self.layers.get(name).copied()
    }

    /// Whether the model has a tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.data.manifest.tensor(name).is_ok()
    }

    /// Whether `name` is a quantized lookup table.
    pub fn is_quantized_table(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }

    fn cached(&self, key: &str) -> Option<Tensor> {
        self.uploaded.lock().ok().and_then(|m| m.get(key).cloned())
    }

    fn remember(&self, key: String, t: &Tensor) {
        if let Ok(mut m) = self.uploaded.lock() {
            m.insert(key, t.clone());
        }
    }

    fn remember_tiled(&self, label: &str, w: &QuantWeightsGpu) {
        if let Ok(mut m) = self.tiled.lock() {
            m.insert(label.to_string(), w.storage_bytes());
        }
    }

    /// Tensor `name` as stored (its encoding and bytes unchanged).
    pub async fn stored(&self, name: &str) -> Result<Tensor> {
        if let Some(t) = self.cached(name) {
            return Ok(t);
        }
        let entry = self.data.manifest.tensor(name)?;
        let bytes = self.data.tensor_bytes(name)?;
        let t = Tensor::upload(self.gpu, name, entry.shape.clone(), entry.encoding()?, &bytes).await?;
        self.remember(name.to_string(), &t);
        Ok(t)
    }

    /// Tensor `name` widened to f32 (floats only; a packed tensor is a typed error).
    pub async fn f32(&self, name: &str) -> Result<Tensor> {
        let key = format!("{name} as f32");
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        let entry = self.data.manifest.tensor(name)?;
        if entry.encoding()?.packed_bits().is_some() {
            return Err(RuntimeError::UnsupportedModel(format!(
                "tensor {name:?} is packed {} but is read as floats",
                entry.encoding()?.tag()
            )));
        }
        let values = self.data.tensor_f32(name)?;
        let t = Tensor::from_f32(self.gpu, name, entry.shape.clone(), &values).await?;
        self.remember(key, &t);
        Ok(t)
    }

    /// The scales of packed tensor `name` as stored (f32 or f16).
    pub async fn scales(&self, name: &str) -> Result<Tensor> {
        self.stored(&scale_name(name)).await
    }

    /// The packed weight of the quantized layer `layer` (tensor `name`) with its scales, as
    /// [`QuantWeightsGpu::upload`] lays them out for the integer product (counted in
    /// [`WeightLoader::bytes`]; each layer's weight is loaded once).
    pub async fn quant_weights(&self, name: &str, layer: &QuantizedLayer) -> Result<QuantWeightsGpu> {
        let bad = |why: String| RuntimeError::quantized_layer(name, why);
        let entry = self.data.manifest.tensor(name)?;
        let &[_, cols] = &entry.shape[..] else {
            return Err(bad(format!("a quantized weight is 2-D, shape {:?}", entry.shape)));
        };
        layer.validate(cols).map_err(|e| RuntimeError::quantized_layer(name, e))?;
        let rows = self.data.tensor_bytes(name)?;
        let scales = self.scales(name).await?;
        let weights = QuantWeightsGpu::upload(
            self.gpu,
            name,
            entry.shape.clone(),
            entry.encoding()?,
            &rows,
            scales,
            layer.group,
        )
        .await
        .map_err(|e| of_layer(name, e))?;
        self.remember_tiled(name, &weights);
        Ok(weights)
    }

    /// The packed weights of the quantized layers `names` (in order, each a dense weight) stacked
    /// in one weight of [`QuantWeightsGpu`] views ([`QuantWeightsGpu::stack`]), where all
    /// transform and quantize their input alike and store their weights alike (bits, group,
    /// encodings, width) and [`QuantWeightsGpu::stackable`] holds; `None` otherwise (load each
    /// with [`WeightLoader::quant_weights`]).
    pub async fn stacked_quant_weights(
        &self,
        names: &[&str],
    ) -> Result<Option<Vec<(&'a QuantizedLayer, QuantWeightsGpu)>>> {
        let mut layers = Vec::with_capacity(names.len());
        for &name in names {
            match self.quantized_layer(name) {
                Some(layer) if self.has(name) => layers.push(layer),
                _ => return Ok(None),
            }
        }
        let Some(&first) = layers.first() else { return Ok(None) };
        let (entry, scale_entry) =
            (self.data.manifest.tensor(names[0])?, self.data.manifest.tensor(&scale_name(names[0]))?);
        let (encoding, scale_encoding) = (entry.encoding()?, scale_entry.encoding()?);
        let &[_, cols] = &entry.shape[..] else { return Ok(None) };
        let mut outs = Vec::with_capacity(names.len());
        for (&name, layer) in names.iter().zip(&layers) {
            let (e, s) = (self.data.manifest.tensor(name)?, self.data.manifest.tensor(&scale_name(name))?);
            let alike = layer.weight_bits == first.weight_bits
                && layer.group == first.group
                && layer.activation == first.activation
                && layer.online == first.online
                && e.encoding()? == encoding
                && s.encoding()? == scale_encoding
                && e.shape.len() == 2
                && e.shape[1] == cols;
            if !alike {
                return Ok(None);
            }
            layer.validate(cols).map_err(|e| RuntimeError::quantized_layer(name, e))?;
            outs.push(e.shape[0]);
        }
        let layout = WeightLayout::new(cols, encoding, first.group, scale_encoding)
            .map_err(|e| of_layer(names[0], e))?;
        if !QuantWeightsGpu::stackable(self.gpu, &outs, &layout) {
            return Ok(None);
        }
        let (mut rows, mut scale_bytes) = (Vec::new(), Vec::new());
        for &name in names {
            rows.extend_from_slice(&self.data.tensor_bytes(name)?);
            scale_bytes.extend_from_slice(&self.data.tensor_bytes(&scale_name(name))?);
        }
        let total: usize = outs.iter().sum();
        let label = names.join(" + ");
        let scale_shape = match first.group {
            Some(group) => vec![total, cols / group],
            None => vec![total],
        };
        let scales = Tensor::upload(self.gpu, &label, scale_shape, scale_encoding, &scale_bytes).await?;
        let weights = QuantWeightsGpu::upload(
            self.gpu,
            &label,
            vec![total, cols],
            encoding,
            &rows,
            scales.clone(),
            first.group,
        )
        .await
        .map_err(|e| of_layer(names[0], e))?;
        self.remember_tiled(&label, &weights);
        self.remember(format!("{label} scales"), &scales);
        Ok(Some(layers.into_iter().zip(weights.stack(&outs)?).collect()))
    }

    /// A quantized table's values as f32 (`f32(q) · s` per row, the contract's lookup), for a
    /// float matrix that shares the table's tensor (a tied `lm_head` left float).
    pub async fn dequantized_table(&self, name: &str) -> Result<Tensor> {
        let key = format!("{name} dequantized");
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        let table =
            self.tables.get(name).ok_or_else(|| FormatError::NoSuchTensor { name: name.to_string() })?;
        let entry = self.data.manifest.tensor(name)?;
        let [rows, cols] = entry.shape[..] else {
            return Err(RuntimeError::Shape(format!("table {name:?} has shape {:?}", entry.shape)));
        };
        let bits = Bits::from_bits(table.bits).map_err(FormatError::from)?;
        let values = pocketvlm_format::quant::pack::unpack(bits, &self.data.tensor_bytes(name)?, rows, cols)
            .map_err(FormatError::from)?;
        let scales = self.data.tensor_f32(&scale_name(name))?;
        let all: Vec<usize> = (0..rows).collect();
        let f = QuantizedTable::lookup(&values, &scales, cols, &all);
        let t = Tensor::from_f32(self.gpu, name, vec![rows, cols], &f).await?;
        self.remember(key, &t);
        Ok(t)
    }

    /// Bytes of every tensor uploaded so far.
    pub fn bytes(&self) -> u64 {
        let tensors = self.uploaded.lock().map_or(0, |m| m.values().map(|t| t.buffer.size()).sum::<u64>());
        tensors + self.tiled.lock().map_or(0, |m| m.values().sum::<u64>())
    }
}

/// An upload's refusal of the quantized layer `name`'s weights, named after the layer.
fn of_layer(name: &str, e: RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::UnsupportedModel(why) => RuntimeError::quantized_layer(name, why),
        other => other,
    }
}

/// `true` for the encodings the float kernels read.
pub fn is_float(e: Encoding) -> bool {
    matches!(e, Encoding::F32 | Encoding::F16 | Encoding::BF16)
}

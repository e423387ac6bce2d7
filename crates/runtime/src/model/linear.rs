//! The model's layers, each chosen once from the manifest: [`Linear`] (one float or quantized
//! [`Matrix`], or a low-rank pair of them) and [`Embedding`]; the joint-QKV latent is
//! [`super::qkv`].
//! The towers say `linear.forward(…)` and never look at an encoding.

use pocketvlm_format::compression::linear_factor_names;
use pocketvlm_format::quant::{ActivationQuant, QuantizedLayer};

use super::scratch::Scratch;
use super::weights::{WeightLoader, is_float};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::kernels::elementwise::SiluMul;
use crate::kernels::embed::EmbedTable;
use crate::kernels::matmul::{Matmul, MatmulShape};
use crate::kernels::norm::QuantizedOutput;
use crate::kernels::quant::{
    MAX_PARTS, QMatmul, QuantWeightsGpu, Quantize, QuantizedRows, Rotate, RotationTable, activation_words,
};
use crate::kernels::rotate_quantize::RotateQuantize;
use crate::kernels::util::{chunks, rows_per_chunk};
use crate::memory::DeviceBuffer;
use crate::tensor::Tensor;

/// A quantized linear layer on the GPU: the integer contract's steps 1–7
/// ([`pocketvlm_format::quant`]) as three kernels: the online rotations of each input token,
/// its activation integers and scale, the integer product with its dequantization.
pub struct QuantLinear {
    pub weights: QuantWeightsGpu,
    pub activation: ActivationQuant,
    /// Applied to each input token, in order, before it is quantized.
    pub online: Vec<RotationTable>,
    pub bias: Option<Tensor>,
}

/// One matrix product `y = W x + b` for every row `x` of an f32 input.
pub enum Matrix {
    /// A float weight `[out, in]` (f32, f16 or bf16, widened in the kernel).
    Float {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Quant(Box<QuantLinear>),
}

/// A linear layer: one [`Matrix`], or a low-rank pair `y = up · (down · x) (+ b)` (the format's
/// single factored linear, [`pocketvlm_format::compression`]; the bias belongs to `up`).
pub struct Linear {
    pub down: Option<Matrix>,
    pub up: Matrix,
}

impl From<Matrix> for Linear {
    fn from(up: Matrix) -> Self {
        Self { down: None, up }
    }
}

impl Linear {
    /// The layer `{base}.weight` with the f32 bias `bias` if given: dense, or factored when the
    /// manifest holds `{base}.down.weight` and `{base}.up.weight` instead.
    pub async fn load(w: &WeightLoader<'_>, weight: &str, bias: Option<&str>) -> Result<Self> {
        if let Some(base) = weight.strip_suffix(".weight")
            && !w.has(weight)
        {
            let (down, up) = linear_factor_names(base);
            if w.has(&down) {
                return Ok(Self {
                    down: Some(Matrix::load(w, &down, None).await?),
                    up: Matrix::load(w, &up, bias).await?,
                });
            }
        }
        Ok(Matrix::load(w, weight, bias).await?.into())
    }

    /// The layers `names` (weights `{base}.weight`, no biases) that read one input, each as
    /// [`Linear::load`] loads it — quantized layers stacked in one weight where
    /// [`WeightLoader::stacked_quant_weights`] allows, so one product writes all of them.
    pub async fn load_group<const N: usize>(w: &WeightLoader<'_>, names: [&str; N]) -> Result<[Linear; N]> {
        load_stacked(w, names, async |name| Linear::load(w, name, None).await).await
    }

    pub fn out_features(&self) -> usize {
        self.up.out_features()
    }

    pub fn in_features(&self) -> usize {
        self.down.as_ref().unwrap_or(&self.up).in_features()
    }

    /// Record `y = x Wᵀ (+ b)` for `rows` rows: `x` f32 `[rows, in]`, `y` f32 `[rows, out]`.
    pub async fn forward(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        rows: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        match &self.down {
            None => self.up.forward(gpu, encoder, scratch, rows, x, y).await,
            Some(down) => {
                let bytes = (rows * down.out_features() * 4) as u64;
                let inner = scratch.bytes(gpu, "low-rank intermediate", bytes).await?;
                down.forward(gpu, encoder, scratch, rows, x, &inner).await?;
                self.up.forward(gpu, encoder, scratch, rows, &inner, y).await
            }
        }
    }
}

impl Linear {
    /// Record `y = (silu(gate) · up) Wᵀ (+ b)` for `rows` rows (Llama's MLP down projection;
    /// `gate`, `up` and `act` f32 `[rows, in]`): for one quantized matrix whose input's online
    /// rotation and quantization fit one dispatch, that dispatch computes `silu(gate) · up`
    /// itself (the same operations as [`SiluMul`], so the same bits); otherwise [`SiluMul`]
    /// writes `act` and [`Linear::forward`] reads it.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward_silu_mul(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        rows: usize,
        (gate, up): (&wgpu::Buffer, &wgpu::Buffer),
        act: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        if let Linear { down: None, up: Matrix::Quant(q) } = self
            && q.forward_silu_mul(gpu, encoder, scratch, rows, (gate, up), y).await?.is_some()
        {
            return Ok(());
        }
        SiluMul.encode(gpu, encoder, rows * self.in_features(), gate, up, act).await?;
        self.forward(gpu, encoder, scratch, rows, act, y).await
    }
}

/// The f32 input `[rows, in]` of linear layers, with its integers and scales where the kernel
/// that wrote it also quantized it ([`QuantizedOutput`]: a norm quantizing its output for the
/// layers that read it).
#[derive(Clone, Copy)]
pub struct LayerInput<'a> {
    pub x: &'a wgpu::Buffer,
    pub quantized: Option<QuantizedOutput<'a>>,
}

impl<'a> From<&'a wgpu::Buffer> for LayerInput<'a> {
    fn from(x: &'a wgpu::Buffer) -> Self {
        Self { x, quantized: None }
    }
}

/// The quantized layers of `layers` when every one is one quantized matrix and all transform and
/// quantize their input alike (so `x` is rotated and quantized once for all); `None` otherwise.
fn shared_quantization<'a>(layers: &[&'a Linear]) -> Option<Vec<&'a QuantLinear>> {
    let quantized: Vec<&QuantLinear> = layers
        .iter()
        .filter_map(|l| match l {
            Linear { down: None, up: Matrix::Quant(q) } => Some(&**q),
            _ => None,
        })
        .collect();
    let shared = !quantized.is_empty()
        && quantized.len() == layers.len()
        && quantized.windows(2).all(|w| w[0].same_input_steps(w[1]));
    shared.then_some(quantized)
}

/// How a kernel writing the input of `layers` may quantize it for them: their shared activation
/// quantization, where they have one and no online transforms come before it.
pub fn input_quantization<'a>(layers: &[&'a Linear]) -> Option<&'a ActivationQuant> {
    let quantized = shared_quantization(layers)?;
    let first = quantized.first()?;
    first.online.is_empty().then_some(&first.activation)
}

/// Record `yᵢ = x Wᵢᵀ (+ bᵢ)` for layers that read the same input (q/k/v, gate/up), each
/// `(layer, yᵢ)` over `rows` rows of `x`. When every layer is one quantized matrix with the same
/// input steps (online transforms, activation quantization, width), `x` is rotated and quantized
/// once — or not at all when `x` comes quantized as they quantize it — and each layer only
/// multiplies: the integers are the same, so is every output. Otherwise the layers run one by
/// one.
pub async fn forward_shared(
    gpu: &Gpu,
    encoder: &mut Encoder,
    scratch: &mut Scratch,
    rows: usize,
    x: LayerInput<'_>,
    layers: &[(&Linear, &wgpu::Buffer)],
) -> Result<()> {
    let linears: Vec<&Linear> = layers.iter().map(|(l, _)| *l).collect();
    let Some(quantized) = shared_quantization(&linears) else {
        for (layer, y) in layers {
            layer.forward(gpu, encoder, scratch, rows, x.x, y).await?;
        }
        return Ok(());
    };
    let first = quantized[0];
    let widest = quantized.iter().map(|q| q.weights.out()).max().unwrap_or(0);
    let chunk = first.row_chunk(gpu, rows, widest)?;
    let outputs = |r0: usize| -> Vec<(&QuantLinear, (&wgpu::Buffer, u64))> {
        quantized
            .iter()
            .zip(layers)
            .map(|(q, (_, y))| (*q, (*y, (r0 * q.weights.out() * 4) as u64)))
            .collect()
    };
    if let Some(q) = x.quantized
        && first.online.is_empty()
        && first.activation == *q.activation
        && chunk >= rows
    {
        let a = QuantizedRows::new(q.words, q.scales, rows, first.input_words());
        return products(gpu, encoder, &a, &outputs(0)).await;
    }
    for (r0, mr) in chunks(rows, chunk) {
        let (words, scales) = first.quantize_input(gpu, encoder, scratch, (x.x, r0), mr).await?;
        let a = QuantizedRows::new(&words, &scales, mr, first.input_words());
        products(gpu, encoder, &a, &outputs(r0)).await?;
    }
    Ok(())
}

/// Steps 6–7 of quantized layers on the same rows `a`, each `(layer, y)`: in one dispatch where
/// the layers are stacked in this order in one weight ([`QuantWeightsGpu::stack`]) without
/// biases, else one by one.
pub async fn products(
    gpu: &Gpu,
    encoder: &mut Encoder,
    a: &QuantizedRows<'_>,
    layers: &[(&QuantLinear, (&wgpu::Buffer, u64))],
) -> Result<()> {
    let stacked = (2..=MAX_PARTS).contains(&layers.len())
        && layers.iter().all(|(q, _)| q.bias.is_none())
        && layers.windows(2).all(|w| w[0].0.weights.followed_by(&w[1].0.weights));
    if !stacked {
        for (q, y) in layers {
            q.product(gpu, encoder, a, *y).await?;
        }
        return Ok(());
    }
    let parts: Vec<_> = layers.iter().map(|(q, y)| (&q.weights, *y)).collect();
    let kernel = QMatmul { parts: parts.len(), ..QMatmul::for_rows(gpu, &layers[0].0.weights, a, false) };
    kernel.encode_parts(gpu, encoder, a, &parts, None).await
}

impl Matrix {
    /// The matrix whose weight is tensor `weight` (quantized when the manifest's `quantization`
    /// section lists it), with the f32 bias `bias` if given.
    pub async fn load(w: &WeightLoader<'_>, weight: &str, bias: Option<&str>) -> Result<Self> {
        let bias = match bias {
            Some(b) => Some(w.f32(b).await?),
            None => None,
        };
        if let Some(layer) = w.quantized_layer(weight) {
            let weights = w.quant_weights(weight, layer).await?;
            return Ok(Matrix::Quant(Box::new(QuantLinear::new(w, weight, layer, weights, bias).await?)));
        }
        let tensor = if w.is_quantized_table(weight) {
            w.dequantized_table(weight).await?
        } else {
            w.stored(weight).await?
        };
        if tensor.shape.len() != 2 || !is_float(tensor.encoding) {
            return Err(RuntimeError::UnsupportedModel(format!(
                "tensor {weight:?} ({} {:?}) is not a float matrix and no quantized layer names it",
                tensor.encoding.tag(),
                tensor.shape
            )));
        }
        if let Some(b) = &bias {
            b.expect_shape(&format!("bias of {weight:?}"), &[tensor.shape[0]])?;
        }
        Ok(Matrix::Float { weight: tensor, bias })
    }

    /// The matrices `names` (no biases) that read one input, stacked in one weight as
    /// [`Linear::load_group`] stacks layers, else each as [`Matrix::load`] loads it.
    pub async fn load_group<const N: usize>(w: &WeightLoader<'_>, names: [&str; N]) -> Result<[Matrix; N]> {
        load_stacked(w, names, async |name| Matrix::load(w, name, None).await).await
    }

    pub fn out_features(&self) -> usize {
        match self {
            Matrix::Float { weight, .. } => weight.shape[0],
            Matrix::Quant(q) => q.weights.out(),
        }
    }

    pub fn in_features(&self) -> usize {
        match self {
            Matrix::Float { weight, .. } => weight.shape[1],
            Matrix::Quant(q) => q.weights.cols(),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Matrix::Float { bias, .. } => bias.as_ref(),
            Matrix::Quant(q) => q.bias.as_ref(),
        }
    }

    /// Record `y = x Wᵀ (+ b)` for `rows` rows: `x` f32 `[rows, in]`, `y` f32 `[rows, out]`.
    pub async fn forward(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        rows: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let (n, k) = (self.out_features(), self.in_features());
        match self {
            Matrix::Float { weight, bias } => {
                let kernel = Matmul::for_weights(gpu, bias.is_some(), weight.encoding);
                let shape = MatmulShape { m: rows, n, k };
                kernel
                    .encode(gpu, encoder, shape, x, &weight.buffer, bias.as_ref().map(|b| &*b.buffer), y)
                    .await
            }
            Matrix::Quant(q) => q.forward(gpu, encoder, scratch, rows, x, y).await,
        }
    }
}

/// The layers `names` (no biases) that read one input: quantized matrices stacked in one weight
/// where [`WeightLoader::stacked_quant_weights`] allows, else each as `each` loads it.
async fn load_stacked<T: From<Matrix>, const N: usize>(
    w: &WeightLoader<'_>,
    names: [&str; N],
    each: impl AsyncFn(&str) -> Result<T>,
) -> Result<[T; N]> {
    let mut layers = Vec::with_capacity(N);
    match w.stacked_quant_weights(&names).await? {
        Some(views) => {
            for (name, (layer, weights)) in names.iter().zip(views) {
                let q = QuantLinear::new(w, name, layer, weights, None).await?;
                layers.push(T::from(Matrix::Quant(Box::new(q))));
            }
        }
        None => {
            for name in names {
                layers.push(each(name).await?);
            }
        }
    }
    layers.try_into().map_err(|_| RuntimeError::Shape(format!("{N} layers loaded as another number")))
}

impl QuantLinear {
    /// The layer `name` of the manifest's `layer` with its uploaded `weights` and f32 `bias`.
    async fn new(
        w: &WeightLoader<'_>,
        name: &str,
        layer: &QuantizedLayer,
        weights: QuantWeightsGpu,
        bias: Option<Tensor>,
    ) -> Result<Self> {
        let activation = layer.activation.build().map_err(|e| RuntimeError::quantized_layer(name, e))?;
        let mut online = Vec::new();
        for spec in &layer.online {
            let rotation = spec.build().map_err(|e| RuntimeError::quantized_layer(name, e))?;
            online.push(RotationTable::new(w.gpu, &rotation).await?);
        }
        if let Some(b) = &bias {
            b.expect_shape(&format!("bias of {name:?}"), &[weights.out()])?;
        }
        Ok(Self { weights, activation, online, bias })
    }

    /// Steps 1–7 of the contract for `rows` rows, in row passes that keep every binding within
    /// the device's limit.
    async fn forward(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        rows: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let out = self.weights.out();
        for (r0, mr) in chunks(rows, self.row_chunk(gpu, rows, out)?) {
            let (words, scales) = self.quantize_input(gpu, encoder, scratch, (x, r0), mr).await?;
            let a = QuantizedRows::new(&words, &scales, mr, self.input_words());
            self.product(gpu, encoder, &a, (y, (r0 * out * 4) as u64)).await?;
        }
        Ok(())
    }

    /// Whether `other` transforms and quantizes its input exactly as this layer does.
    fn same_input_steps(&self, other: &QuantLinear) -> bool {
        self.activation == other.activation
            && self.weights.cols() == other.weights.cols()
            && self.online.len() == other.online.len()
            && self.online.iter().zip(&other.online).all(|(a, b)| a.same_transform(b))
    }

    /// Words per row of the quantized input.
    fn input_words(&self) -> usize {
        activation_words(self.weights.cols())
    }

    /// Rows per pass such that the input, an output `out` wide and the activation integers each
    /// fit one binding.
    fn row_chunk(&self, gpu: &Gpu, rows: usize, out: usize) -> Result<usize> {
        let cols = self.weights.cols();
        let what = format!("a quantized layer's [{rows}, {cols}] input and [{rows}, {out}] output");
        rows_per_chunk(
            gpu,
            &what,
            rows,
            &[(cols * 4) as u64, (out * 4) as u64, (self.input_words() * 4) as u64],
        )
    }

    /// Steps 1–5 for rows `x.1 .. x.1 + rows` of `x`: the online transforms, then the integers
    /// and scales (scratch buffers, returned) — in one dispatch where
    /// [`Self::one_dispatch_rotation`] allows.
    async fn quantize_input(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        x: (&wgpu::Buffer, usize),
        rows: usize,
    ) -> Result<(DeviceBuffer, DeviceBuffer)> {
        let cols = self.weights.cols();
        let x_row = (cols * 4) as u64;
        let x_offset = x.1 as u64 * x_row;
        let (words, scales) = self.activation_buffers(gpu, scratch, rows).await?;
        if let Some(r) = self.one_dispatch_rotation(gpu, rows) {
            let input = ((x.0, x_offset), None);
            self.rotate_quantize(gpu, encoder, scratch, r, input, rows, (&words, &scales)).await?;
            return Ok((words, scales));
        }
        let input = match self.online.as_slice() {
            [] => (x.0.clone(), x_offset),
            online => {
                let bytes = rows as u64 * x_row;
                let mut rotated = scratch.bytes(gpu, "rotated activations", bytes).await?;
                let mut other = scratch.bytes(gpu, "rotated activations (second)", bytes).await?;
                encoder.copy_buffer_to_buffer(x.0, x_offset, &rotated, 0, bytes);
                for r in online {
                    Rotate.encode(gpu, encoder, r, &rotated, &other, rows).await?;
                    std::mem::swap(&mut rotated, &mut other);
                }
                ((*rotated).clone(), 0)
            }
        };
        Quantize
            .encode(gpu, encoder, &self.activation, (&input.0, input.1), rows, cols, &words, &scales)
            .await?;
        Ok((words, scales))
    }

    /// The scratch buffers of the integers and scales of `rows` quantized input rows.
    async fn activation_buffers(
        &self,
        gpu: &Gpu,
        scratch: &mut Scratch,
        rows: usize,
    ) -> Result<(DeviceBuffer, DeviceBuffer)> {
        let words = scratch.bytes(gpu, "activation integers", (rows * self.input_words() * 4) as u64).await?;
        let scales = scratch.bytes(gpu, "activation scales", (rows * 4) as u64).await?;
        Ok((words, scales))
    }

    /// Steps 1–5 of `rows` rows in one dispatch ([`RotateQuantize`]) with the layer's one online
    /// rotation `r`: of the rows of `input.0`, or with `input.1` the rows `silu(input.0) · up`,
    /// into `words` and `scales`.
    #[allow(clippy::too_many_arguments)]
    async fn rotate_quantize(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        r: &RotationTable,
        input: ((&wgpu::Buffer, u64), Option<(&wgpu::Buffer, u64)>),
        rows: usize,
        (words, scales): (&wgpu::Buffer, &wgpu::Buffer),
    ) -> Result<()> {
        let bytes = (rows * self.weights.cols() * 4) as u64;
        let work = scratch.bytes(gpu, "rotated activations (second)", bytes).await?;
        let rotated = scratch.bytes(gpu, "rotated activations", bytes).await?;
        let (x, up) = input;
        let aw = self.input_words();
        RotateQuantize
            .encode(gpu, encoder, r, &self.activation, x, up, rows, (&work, &rotated), (words, aw), scales)
            .await
    }

    /// The layer's one online rotation, where `rows` rows take one row pass and the rotation and
    /// quantization of their input one dispatch ([`RotateQuantize::fits`]).
    fn one_dispatch_rotation(&self, gpu: &Gpu, rows: usize) -> Option<&RotationTable> {
        match self.online.as_slice() {
            [r] if RotateQuantize::fits(r, self.input_words(), rows)
                && self.row_chunk(gpu, rows, self.weights.out()).is_ok_and(|c| c >= rows) =>
            {
                Some(r)
            }
            _ => None,
        }
    }

    /// `y = (silu(gate) · up) Wᵀ (+ b)` for `rows` rows in two dispatches, where the input's
    /// rotation and quantization take one ([`Self::one_dispatch_rotation`]); `None` otherwise.
    #[allow(clippy::too_many_arguments)]
    async fn forward_silu_mul(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        rows: usize,
        (gate, up): (&wgpu::Buffer, &wgpu::Buffer),
        y: &wgpu::Buffer,
    ) -> Result<Option<()>> {
        let Some(r) = self.one_dispatch_rotation(gpu, rows) else {
            return Ok(None);
        };
        let (words, scales) = self.activation_buffers(gpu, scratch, rows).await?;
        let input = ((gate, 0), Some((up, 0)));
        self.rotate_quantize(gpu, encoder, scratch, r, input, rows, (&words, &scales)).await?;
        let a = QuantizedRows::new(&words, &scales, rows, self.input_words());
        self.product(gpu, encoder, &a, (y, 0)).await?;
        Ok(Some(()))
    }

    /// Steps 2–5 for `rows` rows of `x` (a layer without online transforms, such as the ups of
    /// a joint-QKV latent): integers into `words.0` (u32 `[rows, words.1]`, see
    /// [`Quantize::encode_strided`]) and scales into `scales` (f32 `[rows]`).
    #[allow(clippy::too_many_arguments)]
    pub async fn quantize(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        rows: usize,
        x: &wgpu::Buffer,
        words: (&wgpu::Buffer, usize),
        scales: &wgpu::Buffer,
    ) -> Result<()> {
        if !self.online.is_empty() {
            return Err(RuntimeError::UnsupportedModel(
                "a quantized latent's up-projection has online transforms".into(),
            ));
        }
        let cols = self.weights.cols();
        Quantize.encode_strided(gpu, encoder, &self.activation, (x, 0), rows, cols, words, scales).await
    }

    /// Steps 6–7 on already quantized rows: `y = dequant(W a) (+ b)` written from byte `y.1`.
    pub async fn product(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        a: &QuantizedRows<'_>,
        y: (&wgpu::Buffer, u64),
    ) -> Result<()> {
        QMatmul::for_rows(gpu, &self.weights, a, self.bias.is_some())
            .encode(gpu, encoder, a, &self.weights, self.bias.as_ref(), y)
            .await
    }
}

/// The token embeddings: a float table, or the contract's INT8 or INT4 table with a scale per row.
pub struct Embedding {
    pub table: EmbedTable,
}

impl Embedding {
    pub async fn load(w: &WeightLoader<'_>, name: &str) -> Result<Self> {
        let values = w.stored(name).await?;
        let scales = if w.is_quantized_table(name) { Some(w.scales(name).await?) } else { None };
        if scales.is_none() && !is_float(values.encoding) {
            return Err(RuntimeError::UnsupportedModel(format!(
                "embedding table {name:?} is packed {} but the manifest lists no quantized table for it",
                values.encoding.tag()
            )));
        }
        let table = EmbedTable::new(values, scales)?;
        Ok(Self { table })
    }
}

//! Online rotations of activation rows ([`Rotate`]): the Hadamard-based rotations the integer
//! contract applies before quantizing, from a [`RotationTable`] of signs and core offsets.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use pocketvlm_format::quant::hadamard::hadamard;
use pocketvlm_format::quant::rotation::seeded_signs;
use pocketvlm_format::quant::{Construction, Rotation};

use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::kernels::util::{check_binding, dispatch, distinct, grid, require_size, slice};
use crate::kernels::{Kernel, groups};
use crate::memory::DeviceBuffer;
use crate::shader::Defines;

use super::INVOCATIONS;

/// Uniform block of `shaders/rotate.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(in crate::kernels) struct RotateParams {
    tokens: u32,
    n: u32,
    m: u32,
    p: u32,
    pub(in crate::kernels) has_signs: u32,
    pub(in crate::kernels) core_offset: u32,
    pub(in crate::kernels) scale: f32,
    pub(in crate::kernels) has_core: u32,
    /// Distance between the values one invocation of a butterfly level holds.
    stride: u32,
    /// Outputs per column one invocation of the core computes.
    core_rows: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<RotateParams>() == 48);

/// An online rotation ready for [`Rotate`]: its factors and constant, and a GPU table with its
/// sign mask and Hadamard core as bits.
pub struct RotationTable {
    params: RotateParams,
    table: DeviceBuffer,
    /// What determines the transform: construction, factors and sign seed.
    key: (Construction, usize, usize, Option<u32>),
}

impl RotationTable {
    /// Build the table of `rotation` (the signs from its seed, the core from its order).
    pub async fn new(gpu: &Gpu, rotation: &Rotation) -> Result<Self> {
        let n = rotation.size();
        let (m, p) = rotation.factors();
        let core = match rotation.construction() {
            Construction::Kronecker if m > 1 => Some(hadamard(m).ok_or_else(|| {
                RuntimeError::UnsupportedModel(format!(
                    "no Hadamard matrix of order {m} for a rotation of {n}"
                ))
            })?),
            _ => None,
        };
        let signs = rotation.seed().map(|s| seeded_signs(s, n)).unwrap_or_default();
        let mut words = bits_to_words(&signs);
        words.resize(n.div_ceil(32), 0);
        let core_offset = words.len();
        if let Some(core) = &core {
            words.extend(bits_to_words(&core.iter().map(|&v| v < 0).collect::<Vec<_>>()));
        }
        let table = gpu.storage_buffer("rotation table", bytemuck::cast_slice(&words)).await?;
        let params = RotateParams {
            tokens: 0,
            n: n as u32,
            m: m as u32,
            p: p as u32,
            has_signs: u32::from(!signs.is_empty()),
            core_offset: core_offset as u32,
            scale: rotation.scale_f32(),
            has_core: u32::from(core.is_some()),
            stride: 1,
            core_rows: core_rows(gpu, m) as u32,
            _pad: [0; 2],
        };
        Ok(Self { params, table, key: (rotation.construction(), m, p, rotation.seed()) })
    }

    /// Whether `other` applies the same transform (same construction, factors and signs).
    pub fn same_transform(&self, other: &RotationTable) -> bool {
        self.key == other.key
    }

    /// The rotation's size.
    pub fn size(&self) -> usize {
        self.params.n as usize
    }

    /// Bytes of the table on the GPU.
    pub fn bytes(&self) -> u64 {
        self.table.size()
    }

    /// `(n, m, p)`: the size and its factors `n = m·p`.
    pub fn factors(&self) -> (usize, usize, usize) {
        let p = &self.params;
        (p.n as usize, p.m as usize, p.p as usize)
    }

    /// The table (sign mask, then the core from word `params().core_offset`).
    pub(in crate::kernels) fn table(&self) -> &wgpu::Buffer {
        &self.table
    }

    pub(in crate::kernels) fn params(&self) -> &RotateParams {
        &self.params
    }
}

fn bits_to_words(bits: &[bool]) -> Vec<u32> {
    bits.chunks(32).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &b)| w | (u32::from(b) << i))).collect()
}

/// `shaders/rotate.wgsl`: `out ← R·data` for `tokens` rows of f32 `[tokens, n]`: signs and
/// butterflies in place in `data` (which is overwritten), in levels of at most
/// [`ROTATE_LEVEL_STAGES`] butterfly stages whose invocations hold their values in registers
/// (level `L` pairs values `16^L·h` apart, `h < 16`; vec4 loads where the block allows), then
/// the core and the scale into `out` (one invocation per four columns of a row's blocks and, on
/// CPU adapters, as many of its `m` outputs as llvmpipe's loop cap allows, on GPUs one; `m·n`
/// adds per row).
pub struct Rotate;

/// Butterfly stages one level of [`Rotate`] runs (an invocation holds `2^` this many values).
pub const ROTATE_LEVEL_STAGES: u32 = 4;

/// Loop steps one invocation of the core may take (`m` per output; far below llvmpipe's cap).
const CORE_STEPS: usize = 16384;

/// Outputs per column one invocation of the core computes for a core of order `m` on `gpu`: as
/// many as the loop cap allows on CPU adapters (fewer, longer invocations), one on GPUs (a decode
/// step's `36·16` rotation would otherwise be four invocations of 36 outputs each). Each output
/// is the same sum either way.
fn core_rows(gpu: &Gpu, m: usize) -> usize {
    if gpu.caps.cpu { (CORE_STEPS / m.max(1)).clamp(1, m.max(1)) } else { 1 }
}

/// One of the dispatches of [`Rotate`] (see `rotate.wgsl`); `lanes` is 4 where each
/// invocation moves vec4s (four neighbouring columns), else 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RotateStage {
    /// Signs and the butterflies h = 1 … 8 on 16 consecutive values (p ≥ 16).
    LevelFirst,
    /// Butterflies on `width` values (vec4 columns at a stride ≥ 16), or, at stride 1 on a small
    /// block (p < 16), signs and all its butterflies on `width` = p scalars.
    Level { width: usize, lanes: usize },
    /// Core and scale, on four columns (p % 4 = 0) or one per invocation.
    Core { lanes: usize },
}

impl Kernel for RotateStage {
    const SHADER: &'static str = "rotate";
    fn defines(&self) -> Defines {
        let flag = |name: &str| (name.to_string(), String::new());
        let mut defines = match self {
            Self::LevelFirst => BTreeMap::from([flag("LEVEL_FIRST")]),
            Self::Level { width, .. } => {
                BTreeMap::from([flag("LEVEL"), ("WIDTH".to_string(), width.to_string())])
            }
            Self::Core { .. } => BTreeMap::from([flag("CORE")]),
        };
        if self.lanes() == 4 {
            defines.insert("VEC4".to_string(), String::new());
        }
        defines
    }
}

impl RotateStage {
    /// Values each of the stage's loads and stores moves.
    fn lanes(&self) -> usize {
        match self {
            Self::LevelFirst => 4,
            Self::Level { lanes, .. } | Self::Core { lanes } => *lanes,
        }
    }

    /// Whether the stage reads the table (signs or core).
    fn reads_table(&self) -> bool {
        !matches!(self, Self::Level { lanes: 4, .. })
    }

    /// The dispatches of a rotation of `n = m·p` values (`p` a power of two) whose core computes
    /// `core_rows` outputs per invocation, with the stride of each and its work items per row.
    fn plan(n: usize, m: usize, p: usize, core_rows: usize) -> Vec<(RotateStage, usize, usize)> {
        let stages = p.trailing_zeros();
        let per = ROTATE_LEVEL_STAGES;
        let mut plan: Vec<_> = (0..stages.div_ceil(per).max(1))
            .map(|level| {
                let stride = 1usize << (per * level);
                let width = 1usize << stages.saturating_sub(per * level).min(per);
                match (stride, width) {
                    (1, 16) => (RotateStage::LevelFirst, 1, n / 16),
                    (1, _) => (RotateStage::Level { width, lanes: 1 }, 1, n / width),
                    _ => (RotateStage::Level { width, lanes: 4 }, stride, n / (4 * width)),
                }
            })
            .collect();
        let chunks = m.div_ceil(core_rows);
        let lanes = if p.is_multiple_of(4) { 4 } else { 1 };
        plan.push((RotateStage::Core { lanes }, 1, p / lanes * chunks));
        plan
    }
}

impl Rotate {
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        rotation: &RotationTable,
        data: &wgpu::Buffer,
        out: &wgpu::Buffer,
        tokens: usize,
    ) -> Result<()> {
        let bytes = (tokens * rotation.size() * 4) as u64;
        require_size(data, bytes, "rotated rows")?;
        require_size(out, bytes, "rotated rows' output")?;
        check_binding(gpu, "rotated rows", bytes)?;
        distinct(data, out, "a rotation's input and output")?;
        let table = slice(&rotation.table, 0, rotation.table.size());
        let RotateParams { n, m, p, core_rows, .. } = rotation.params;
        let plan = RotateStage::plan(n as usize, m as usize, p as usize, core_rows as usize);
        for (stage, stride, items) in plan {
            let params = RotateParams { tokens: tokens as u32, stride: stride as u32, ..rotation.params };
            // The table holds signs and core: the later butterfly levels read neither.
            let mut resources = vec![slice(data, 0, bytes)];
            if stage.reads_table() {
                resources.push(table.clone());
            }
            if matches!(stage, RotateStage::Core { .. }) {
                resources.push(slice(out, 0, bytes));
            }
            let pipeline = gpu.pipeline(RotateStage::SHADER, &stage.defines()).await?;
            let (gx, gy) = grid(gpu, groups(tokens * items, INVOCATIONS) as u64)?;
            dispatch(gpu, encoder, &pipeline, "rotate", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        }
        Ok(())
    }
}

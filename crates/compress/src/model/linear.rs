//! Linear layers (dense or low-rank) and the tape that records what calibration needs from them.

use std::collections::HashSet;

use candle_core::{Tensor, Var};

use crate::error::Result;

/// Which tower a layer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tower {
    Text,
    Vision,
}

/// A compressible projection of a transformer layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    /// Q, K and V stacked along output rows (`[d_q; d_kv; d_kv]`), one shared input.
    Qkv,
    /// An MLP linear by index: text `gate_proj`, `up_proj`, `down_proj`; vision `fc1`, `fc2`.
    Mlp(usize),
}

/// One compressible linear (or stacked group) of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub tower: Tower,
    pub layer: usize,
    pub proj: Proj,
}

/// `y = up · (down · x) + b`, or `y = W x + b` when there is no `down`. Weights are held
/// transposed (`[in, out]`) so a row-major activation block multiplies them directly.
pub struct Linear {
    /// `downᵀ`, `[in, r]`.
    pub down_t: Option<Tensor>,
    /// `Wᵀ` or `upᵀ`: `[in, out]` or `[r, out]`.
    pub w_t: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.w_t.dims()[1]
    }

    /// Apply to `x` (`[rows, in]`), recording `x` and a gradient probe on the output when the
    /// tape wants `target`.
    pub fn forward(&self, x: &Tensor, target: Target, tape: Option<&mut Tape>) -> Result<Tensor> {
        let h = match &self.down_t {
            Some(d) => x.matmul(d)?,
            None => x.clone(),
        };
        let mut y = h.matmul(&self.w_t)?;
        if let Some(tape) = tape {
            y = tape.tap(target, x, y)?;
        }
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// What one tapped linear saw in one forward pass.
pub struct TapEntry {
    pub target: Target,
    /// The input rows `[rows, in]` (detached).
    pub x: Tensor,
    /// A zero variable added to the output: after `backward`, its gradient is `∂L/∂y`.
    pub probe: Option<Var>,
}

/// Records inputs (and, with gradients, output-gradient probes) of the wanted targets.
pub struct Tape {
    wanted: HashSet<Target>,
    grads: bool,
    pub entries: Vec<TapEntry>,
}

impl Tape {
    pub fn new(wanted: impl IntoIterator<Item = Target>, grads: bool) -> Self {
        Self { wanted: wanted.into_iter().collect(), grads, entries: Vec::new() }
    }

    pub fn wants_tower(&self, tower: Tower) -> bool {
        self.wanted.iter().any(|t| t.tower == tower)
    }

    fn tap(&mut self, target: Target, x: &Tensor, y: Tensor) -> Result<Tensor> {
        if !self.wanted.contains(&target) {
            return Ok(y);
        }
        let (y, probe) = if self.grads {
            let probe = Var::zeros(y.shape(), y.dtype(), y.device())?;
            (y.add(probe.as_tensor())?, Some(probe))
        } else {
            (y, None)
        };
        self.entries.push(TapEntry { target, x: x.detach(), probe });
        Ok(y)
    }
}

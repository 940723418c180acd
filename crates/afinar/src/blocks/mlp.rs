use afinar_engine::{Backend, HalfFormat, Result};

use super::attention::keep_bf16;
use super::Linear;

/// SwiGLU feed-forward block: `down(silu(gate(x)) · up(x))`.
pub struct Mlp<B: Backend> {
    /// `[ffn, dim]`.
    pub gate: Linear<B>,
    /// `[ffn, dim]`.
    pub up: Linear<B>,
    /// `[dim, ffn]`.
    pub down: Linear<B>,
    /// Hidden width.
    pub ffn_dim: usize,
}

/// Activations the MLP writes in its forward pass (kept for the backward), `[rows, ffn]` each.
/// (The hidden activation `silu(gate) · up` is recomputed from them when needed.)
pub struct MlpActs<B: Backend> {
    /// Gate projection.
    pub gate: B::Buf,
    /// Up projection.
    pub up: B::Buf,
}

impl<B: Backend> MlpActs<B> {
    /// Buffers for up to `rows` tokens.
    pub fn new(be: &B, rows: usize, ffn_dim: usize) -> Result<Self> {
        Ok(Self { gate: be.zeros(rows * ffn_dim)?, up: be.zeros(rows * ffn_dim)? })
    }
}

/// [`MlpActs`] kept in bf16 between a layer's forward and its backward (mixed precision).
pub struct HalfMlpActs<B: Backend> {
    /// Gate projection.
    pub gate: B::Half,
    /// Up projection.
    pub up: B::Half,
}

impl<B: Backend> HalfMlpActs<B> {
    /// Buffers for up to `rows` tokens.
    pub fn new(be: &B, rows: usize, ffn_dim: usize) -> Result<Self> {
        Ok(Self {
            gate: be.zeros_half(rows * ffn_dim, HalfFormat::Bf16)?,
            up: be.zeros_half(rows * ffn_dim, HalfFormat::Bf16)?,
        })
    }

    /// Writes these activations of `n = rows · ffn` values back into `a` (f32).
    pub fn load(&self, be: &B, a: &mut MlpActs<B>, n: usize) -> Result<()> {
        be.from_half(&self.gate, 0, &mut a.gate, 0, n)?;
        be.from_half(&self.up, 0, &mut a.up, 0, n)
    }
}

/// Gradient buffers of the MLP backward, reused across layers.
pub struct MlpGrads<B: Backend> {
    /// Gradient of `hidden`.
    pub hidden: B::Buf,
    /// Gradient of the gate projection.
    pub gate: B::Buf,
    /// Gradient of the up projection.
    pub up: B::Buf,
}

impl<B: Backend> MlpGrads<B> {
    /// Buffers for up to `rows` tokens.
    pub fn new(be: &B, rows: usize, ffn_dim: usize) -> Result<Self> {
        Ok(Self {
            hidden: be.zeros(rows * ffn_dim)?,
            gate: be.zeros(rows * ffn_dim)?,
            up: be.zeros(rows * ffn_dim)?,
        })
    }
}

impl<B: Backend> Mlp<B> {
    /// `[gate, up, down]`.
    pub fn projections(&self) -> [&Linear<B>; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// `[gate, up, down]`, mutable.
    pub fn projections_mut(&mut self) -> [&mut Linear<B>; 3] {
        [&mut self.gate, &mut self.up, &mut self.down]
    }

    /// Adds `mlp(xn)` to the residual stream `out`; `hidden` (`[rows, ffn]`) receives
    /// `silu(gate) · up`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_residual(
        &self,
        be: &B,
        xn: &B::Buf,
        out: &mut B::Buf,
        a: &mut MlpActs<B>,
        hidden: &mut B::Buf,
        rows: usize,
        keep: Option<&mut HalfMlpActs<B>>,
    ) -> Result<()> {
        self.gate.forward(be, xn, &mut a.gate, rows, false)?;
        self.up.forward(be, xn, &mut a.up, rows, false)?;
        if let Some(h) = keep {
            keep_bf16(be, &mut a.gate, &mut h.gate, rows * self.ffn_dim)?;
            keep_bf16(be, &mut a.up, &mut h.up, rows * self.ffn_dim)?;
        }
        be.swiglu(&a.gate, &a.up, hidden, rows * self.ffn_dim)?;
        self.down.forward(be, hidden, out, rows, true)
    }

    /// Backward of [`Mlp::forward_residual`]: from the residual gradient `dy`, writes the
    /// gradient of `xn` into `dxn` (when given) and accumulates parameter gradients. `xn` is read
    /// only when the gate or up projection is trainable; `hidden` is scratch space where
    /// `silu(gate) · up` is recomputed when the down projection is.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        xn: &B::Buf,
        a: &MlpActs<B>,
        hidden: &mut B::Buf,
        dy: &B::Buf,
        dxn: Option<&mut B::Buf>,
        g: &mut MlpGrads<B>,
        rows: usize,
    ) -> Result<()> {
        if self.down.needs_input() {
            be.swiglu(&a.gate, &a.up, hidden, rows * self.ffn_dim)?;
        }
        self.down.backward(be, hidden, dy, Some(&mut g.hidden), rows, false)?;
        be.swiglu_backward(&g.hidden, &a.gate, &a.up, &mut g.gate, &mut g.up, rows * self.ffn_dim)?;
        match dxn {
            Some(dxn) => {
                self.gate.backward(be, xn, &g.gate, Some(&mut *dxn), rows, false)?;
                self.up.backward(be, xn, &g.up, Some(dxn), rows, true)
            }
            None => {
                self.gate.backward(be, xn, &g.gate, None, rows, false)?;
                self.up.backward(be, xn, &g.up, None, rows, false)
            }
        }
    }
}

use afinar_engine::{Backend, Result};

/// SwiGLU feed-forward block: `down(silu(gate(x)) · up(x))`.
pub struct Mlp<B: Backend> {
    /// `[ffn, dim]`.
    pub gate: B::Weight,
    /// `[ffn, dim]`.
    pub up: B::Weight,
    /// `[dim, ffn]`.
    pub down: B::Weight,
    /// Hidden width.
    pub ffn_dim: usize,
}

/// Buffers the MLP writes during a forward pass, `[rows, ffn]` each.
pub struct MlpScratch<B: Backend> {
    /// Gate projection.
    pub gate: B::Buf,
    /// Up projection.
    pub up: B::Buf,
    /// `silu(gate) · up`.
    pub hidden: B::Buf,
}

impl<B: Backend> MlpScratch<B> {
    /// Buffers for up to `rows` tokens.
    pub fn new(be: &B, rows: usize, ffn_dim: usize) -> Result<Self> {
        Ok(Self {
            gate: be.zeros(rows * ffn_dim)?,
            up: be.zeros(rows * ffn_dim)?,
            hidden: be.zeros(rows * ffn_dim)?,
        })
    }
}

impl<B: Backend> Mlp<B> {
    /// Adds `mlp(xn)` to the residual stream `out`.
    pub fn forward_residual(
        &self,
        be: &B,
        xn: &B::Buf,
        out: &mut B::Buf,
        s: &mut MlpScratch<B>,
        rows: usize,
    ) -> Result<()> {
        be.linear(xn, &self.gate, &mut s.gate, rows, false)?;
        be.linear(xn, &self.up, &mut s.up, rows, false)?;
        be.swiglu(&s.gate, &s.up, &mut s.hidden, rows * self.ffn_dim)?;
        be.linear(&s.hidden, &self.down, out, rows, true)
    }
}

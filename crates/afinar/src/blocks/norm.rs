use afinar_engine::{Backend, Result};

use super::ParamState;

/// Root-mean-square normalisation with a learned per-channel gain.
pub struct RmsNorm<B: Backend> {
    /// Gain, `[dim]`.
    pub weight: B::Buf,
    /// Width of the rows it normalises.
    pub dim: usize,
    /// Added to the mean square before the square root.
    pub eps: f32,
    /// Gradient state when the gain is trained (full fine-tuning).
    pub state: Option<ParamState<B>>,
}

impl<B: Backend> RmsNorm<B> {
    /// `out[rows, dim] = rmsnorm(x)`, saving `1/rms` per row in `rstd`.
    pub fn forward(
        &self,
        be: &B,
        x: &B::Buf,
        out: &mut B::Buf,
        rstd: &mut B::Buf,
        rows: usize,
    ) -> Result<()> {
        be.rmsnorm(x, &self.weight, out, rstd, rows, self.dim, self.eps)
    }

    /// Adds the input gradient for `dout` to `dx` (the residual stream's gradient passes
    /// through untouched) and accumulates the gain's gradient when it is trained.
    pub fn backward_accumulate(
        &mut self,
        be: &B,
        dout: &B::Buf,
        x: &B::Buf,
        rstd: &B::Buf,
        dx: &mut B::Buf,
        rows: usize,
    ) -> Result<()> {
        self.backward_into(be, [dout, x, rstd], dx, rows, true)
    }

    /// Writes the input gradient for `dout` into `dx` (overwriting it: for a norm off the
    /// residual stream, like the query/key norm) and accumulates the gain's gradient when it is
    /// trained.
    pub fn backward(
        &mut self,
        be: &B,
        dout: &B::Buf,
        x: &B::Buf,
        rstd: &B::Buf,
        dx: &mut B::Buf,
        rows: usize,
    ) -> Result<()> {
        self.backward_into(be, [dout, x, rstd], dx, rows, false)
    }

    fn backward_into(
        &mut self,
        be: &B,
        [dout, x, rstd]: [&B::Buf; 3],
        dx: &mut B::Buf,
        rows: usize,
        add: bool,
    ) -> Result<()> {
        let dw = self.state.as_mut().map(|s| &mut s.grad);
        be.rmsnorm_backward(dout, x, &self.weight, rstd, dx, dw, rows, self.dim, add)
    }
}

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

    /// Writes the input gradient for `dout` into `dx` as [`Dx`] says (added to the residual
    /// stream's gradient, or overwriting it for a norm off the residual stream, like the
    /// query/key norm) and accumulates the gain's gradient when it is trained.
    pub fn backward(
        &mut self,
        be: &B,
        dout: &B::Buf,
        x: &B::Buf,
        rstd: &B::Buf,
        dx: Dx<'_, B::Buf>,
        rows: usize,
    ) -> Result<()> {
        let (dx, add) = match dx {
            Dx::Add(dx) => (dx, true),
            Dx::Overwrite(dx) => (dx, false),
        };
        let dw = self.state.as_mut().map(|s| &mut s.grad);
        be.rmsnorm_backward(dout, x, &self.weight, rstd, dx, dw, rows, self.dim, add)
    }
}

/// Where [`RmsNorm::backward`] writes the input gradient.
pub enum Dx<'a, T> {
    /// Added to the buffer's gradient (the residual stream's passes through untouched).
    Add(&'a mut T),
    /// Written over the buffer.
    Overwrite(&'a mut T),
}

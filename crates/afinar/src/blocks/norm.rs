use afinar_engine::{Backend, Result};

/// Root-mean-square normalisation with a learned per-channel gain.
pub struct RmsNorm<B: Backend> {
    /// Gain, `[dim]`.
    pub weight: B::Buf,
    /// Width of the rows it normalises.
    pub dim: usize,
    /// Added to the mean square before the square root.
    pub eps: f32,
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
}

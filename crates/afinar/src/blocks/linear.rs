use afinar_engine::{Backend, Result};

/// A trainable tensor's gradient and AdamW moments, all shaped like the tensor.
pub struct ParamState<B: Backend> {
    /// Accumulated gradient.
    pub grad: B::Buf,
    /// First moment.
    pub m: B::Buf,
    /// Second moment.
    pub v: B::Buf,
    /// Number of elements.
    pub len: usize,
}

impl<B: Backend> ParamState<B> {
    /// Zeroed state for a tensor of `len` elements.
    pub fn new(be: &B, len: usize) -> Result<Self> {
        Ok(Self {
            grad: be.zeros(len)?,
            m: be.zeros(len)?,
            v: be.zeros(len)?,
            len,
        })
    }

    /// Clears the gradient (keeps the moments).
    pub fn zero_grad(&mut self, be: &B) -> Result<()> {
        be.fill(&mut self.grad, self.len, 0.0)
    }
}

/// A low-rank adapter on a linear layer (LoRA): adds `scale · (x Aᵀ) Bᵀ` to its output, with
/// `A: [rank, in]`, `B: [out, rank]` and `scale = alpha / rank`.
pub struct Lora<B: Backend> {
    /// Down projection `[rank, in]`.
    pub a: B::Buf,
    /// Up projection `[out, rank]`.
    pub b: B::Buf,
    /// Rank.
    pub rank: usize,
    /// `alpha / rank`.
    pub scale: f32,
    /// Gradient and moments of `a`.
    pub a_state: ParamState<B>,
    /// Gradient and moments of `b`.
    pub b_state: ParamState<B>,
}

/// `y = x Wᵀ` with `W: [out, in]`, optionally trainable (full fine-tuning) or adapted (LoRA).
/// A frozen weight never gets a gradient buffer.
pub struct Linear<B: Backend> {
    /// The weight, in whatever format the backend stores it.
    pub weight: B::Weight,
    /// Output features.
    pub out_features: usize,
    /// Input features.
    pub in_features: usize,
    /// Gradient state when the weight itself is trained.
    pub state: Option<ParamState<B>>,
    /// Adapter when LoRA is applied.
    pub lora: Option<Lora<B>>,
}

impl<B: Backend> Linear<B> {
    /// A frozen layer around `weight`.
    pub fn new(be: &B, weight: B::Weight) -> Self {
        let (out_features, in_features) = be.weight_shape(&weight);
        Self {
            weight,
            out_features,
            in_features,
            state: None,
            lora: None,
        }
    }

    /// `y (+)= x Wᵀ (+ LoRA)` over `rows` rows.
    pub fn forward(
        &self,
        be: &B,
        x: &B::Buf,
        y: &mut B::Buf,
        rows: usize,
        accumulate: bool,
    ) -> Result<()> {
        be.linear(x, &self.weight, y, rows, accumulate)?;
        if let Some(l) = &self.lora {
            let mut h = be.zeros(rows * l.rank)?;
            be.matmul(
                x,
                false,
                &l.a,
                true,
                &mut h,
                rows,
                l.rank,
                self.in_features,
                1.0,
                0.0,
            )?;
            be.matmul(
                &h,
                false,
                &l.b,
                true,
                y,
                rows,
                self.out_features,
                l.rank,
                l.scale,
                1.0,
            )?;
        }
        Ok(())
    }

    /// Backward of [`Linear::forward`] for input `x` and output gradient `dy`: writes (or adds,
    /// with `accumulate_dx`) the input gradient into `dx` when given, and accumulates the
    /// gradients of whatever is trainable (the weight, or the adapter's A and B).
    pub fn backward(
        &mut self,
        be: &B,
        x: &B::Buf,
        dy: &B::Buf,
        dx: Option<&mut B::Buf>,
        rows: usize,
        accumulate_dx: bool,
    ) -> Result<()> {
        let (out_f, in_f) = (self.out_features, self.in_features);
        if let Some(s) = &mut self.state {
            // dW += dyᵀ x
            be.matmul(dy, true, x, false, &mut s.grad, out_f, in_f, rows, 1.0, 1.0)?;
        }
        let lora_dh = match &mut self.lora {
            None => None,
            Some(l) => {
                let r = l.rank;
                let mut h = be.zeros(rows * r)?;
                be.matmul(x, false, &l.a, true, &mut h, rows, r, in_f, 1.0, 0.0)?;
                // dB += scale · dyᵀ h ; dh = scale · dy B ; dA += dhᵀ x
                be.matmul(
                    dy,
                    true,
                    &h,
                    false,
                    &mut l.b_state.grad,
                    out_f,
                    r,
                    rows,
                    l.scale,
                    1.0,
                )?;
                let mut dh = h;
                be.matmul(
                    dy, false, &l.b, false, &mut dh, rows, r, out_f, l.scale, 0.0,
                )?;
                be.matmul(
                    &dh,
                    true,
                    x,
                    false,
                    &mut l.a_state.grad,
                    r,
                    in_f,
                    rows,
                    1.0,
                    1.0,
                )?;
                Some(dh)
            }
        };
        if let Some(dx) = dx {
            be.linear_backward_input(dy, &self.weight, dx, rows, accumulate_dx)?;
            if let (Some(dh), Some(l)) = (lora_dh, &self.lora) {
                be.matmul(&dh, false, &l.a, false, dx, rows, in_f, l.rank, 1.0, 1.0)?;
            }
        }
        Ok(())
    }
}

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
        Ok(Self { grad: be.zeros(len)?, m: be.zeros(len)?, v: be.zeros(len)?, len })
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
    /// Dropout probability on the adapter's input while training.
    pub dropout: f32,
    /// Seed of the current dropout mask; `None` disables dropout (inference). The trainer sets
    /// a fresh seed per micro-batch, and the backward reuses it.
    pub dropout_seed: Option<u64>,
}

impl<B: Backend> Lora<B> {
    /// `(p, seed)` when dropout is on.
    fn active_dropout(&self) -> Option<(f32, u64)> {
        self.dropout_seed.filter(|_| self.dropout > 0.0).map(|s| (self.dropout, s))
    }

    /// `x` with dropout applied while training, or `None` to use `x` itself.
    fn dropped_input(&self, be: &B, x: &B::Buf, n: usize) -> Result<Option<B::Buf>> {
        match self.active_dropout() {
            Some((p, seed)) => {
                let mut xd = be.zeros(n)?;
                be.dropout(x, &mut xd, n, p, seed)?;
                Ok(Some(xd))
            }
            None => Ok(None),
        }
    }
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
        Self { weight, out_features, in_features, state: None, lora: None }
    }

    /// Whether [`Linear::backward`] reads its input `x` (to train the weight or an adapter);
    /// a frozen layer needs only the output gradient.
    pub fn needs_input(&self) -> bool {
        self.state.is_some() || self.lora.is_some()
    }

    /// `y (+)= x Wᵀ (+ LoRA)` over `rows` rows.
    pub fn forward(&self, be: &B, x: &B::Buf, y: &mut B::Buf, rows: usize, accumulate: bool) -> Result<()> {
        be.linear(x, &self.weight, y, rows, accumulate)?;
        if let Some(l) = &self.lora {
            let (r, in_f, out_f) = (l.rank, self.in_features, self.out_features);
            let dropped = l.dropped_input(be, x, rows * in_f)?;
            let xd = dropped.as_ref().unwrap_or(x);
            let mut h = be.zeros(rows * r)?;
            be.matmul(xd, false, &l.a, true, &mut h, rows, r, in_f, 1.0, 0.0)?;
            be.matmul(&h, false, &l.b, true, y, rows, out_f, r, l.scale, 1.0)?;
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
            // dW += dyᵀ x, in the precision of the weight's own products.
            let products = be.weight_products(&self.weight);
            be.linear_backward_weight(dy, x, &mut s.grad, rows, out_f, in_f, products, true)?;
        }
        let lora_dh = match &mut self.lora {
            None => None,
            Some(l) => {
                let r = l.rank;
                let dropped = l.dropped_input(be, x, rows * in_f)?;
                let xd = dropped.as_ref().unwrap_or(x);
                let mut h = be.zeros(rows * r)?;
                be.matmul(xd, false, &l.a, true, &mut h, rows, r, in_f, 1.0, 0.0)?;
                // dB += scale · dyᵀ h ; dh = scale · dy B ; dA += dhᵀ xd
                let db = &mut l.b_state.grad;
                be.matmul(dy, true, &h, false, db, out_f, r, rows, l.scale, 1.0)?;
                let mut dh = h;
                be.matmul(dy, false, &l.b, false, &mut dh, rows, r, out_f, l.scale, 0.0)?;
                let da = &mut l.a_state.grad;
                be.matmul(&dh, true, xd, false, da, r, in_f, rows, 1.0, 1.0)?;
                Some(dh)
            }
        };
        if let Some(dx) = dx {
            be.linear_backward_input(dy, &self.weight, dx, rows, accumulate_dx)?;
            if let (Some(dh), Some(l)) = (lora_dh, &self.lora) {
                match l.active_dropout() {
                    Some((p, seed)) => {
                        // dx += mask ⊙ (dh A) / (1 − p): the forward's hashed mask again.
                        let n = rows * in_f;
                        let mut dxd = be.zeros(n)?;
                        be.matmul(&dh, false, &l.a, false, &mut dxd, rows, in_f, l.rank, 1.0, 0.0)?;
                        let mut masked = be.zeros(n)?;
                        be.dropout(&dxd, &mut masked, n, p, seed)?;
                        be.add_assign(dx, &masked, n)?;
                    }
                    None => be.matmul(&dh, false, &l.a, false, dx, rows, in_f, l.rank, 1.0, 1.0)?,
                }
            }
        }
        Ok(())
    }
}

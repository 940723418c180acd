//! Turning a loaded [`Llama`] into something to train: every tensor trainable (full
//! fine-tuning) or low-rank adapters on chosen projections (LoRA), and a walk over the trainable
//! tensors for the optimizer and for saving.

use afinar_engine::{Backend, Products};

use super::{Llama, TensorRef};
use crate::blocks::{DecoderLayer, Linear, Lora, ParamState, RmsNorm, PROJECTIONS};
use crate::generate::Rng;
use crate::{Error, Result};

/// A projection LoRA can adapt, named as Hugging Face/PEFT name the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
    /// `lm_head`
    Output,
}

impl LoraTarget {
    /// The seven projections of a decoder layer (every target but the output projection), in
    /// model order.
    pub const PROJECTIONS: [LoraTarget; 7] =
        [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// Every target, in model order.
    pub const ALL: [LoraTarget; 8] =
        [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down, Self::Output];

    /// The PEFT `target_modules` name.
    pub fn module_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
            Self::Output => "lm_head",
        }
    }

    /// Parses a PEFT module name (`output` is accepted for `lm_head`, as torchtune says).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.module_name() == name).or((name == "output").then_some(Self::Output))
    }
}

/// LoRA settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank `r`.
    pub rank: usize,
    /// Scale numerator: the update is `alpha / r · B A`.
    pub alpha: f32,
    /// Dropout on the adapter input while training.
    pub dropout: f32,
    /// Projections to adapt.
    pub targets: Vec<LoraTarget>,
}

/// A trainable tensor as the optimizer sees it.
pub enum ParamMut<'a, B: Backend> {
    /// A weight matrix trained in place (full fine-tuning).
    Weight(&'a mut B::Weight, &'a mut ParamState<B>),
    /// A plain buffer (norm gains, LoRA matrices).
    Buf(&'a mut B::Buf, &'a mut ParamState<B>),
}

impl<B: Backend> ParamMut<'_, B> {
    /// The tensor's gradient and moments.
    pub fn state(&mut self) -> &mut ParamState<B> {
        match self {
            ParamMut::Weight(_, s) | ParamMut::Buf(_, s) => s,
        }
    }
}

/// A tensor on the host: Hugging Face (or PEFT) name, shape, values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// A tensor whose values are read from the backend only when asked for ([`LazyTensor::fetch`]):
/// checkpoints are written one tensor at a time instead of holding a host copy of the model.
pub struct LazyTensor<'a> {
    /// Hugging Face name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Produces the values (f32), or a message saying what failed.
    pub fetch: Box<afinar_checkpoint::write::Fetch<'a>>,
}

impl<B: Backend> Llama<B> {
    /// Makes every tensor trainable (full fine-tuning). The weights must be stored as f32.
    pub fn enable_full_finetune(&mut self, be: &B) -> Result<()> {
        let c = self.config.clone();
        let trainable = |be: &B, l: &mut Linear<B>| -> Result<()> {
            if l.state.is_none() {
                l.state = Some(ParamState::new(be, l.out_features * l.in_features)?);
            }
            Ok(())
        };
        for layer in &mut self.layers {
            for l in layer.projections_mut() {
                trainable(be, l)?;
            }
            for (_, n) in layer.norms_mut() {
                n.state = Some(ParamState::new(be, n.dim)?);
            }
        }
        self.norm.state = Some(ParamState::new(be, c.dim)?);
        self.embed_state = Some(ParamState::new(be, c.vocab_size * c.dim)?);
        if let Some(out) = &mut self.output {
            trainable(be, out)?;
        }
        Ok(())
    }

    /// Sets the precision of the products with every linear weight and the embedding (the
    /// output projection when tied): [`Products::Bf16`] is mixed precision for full fine-tuning
    /// with `model.dtype: bf16` (f32 weights, gradients and optimizer state, bf16 products with
    /// f32 sums, as `torch.autocast`), [`Products::F32`] the default.
    pub fn set_products(&mut self, be: &B, products: Products) {
        for layer in &mut self.layers {
            for l in layer.projections_mut() {
                be.set_weight_products(&mut l.weight, products);
            }
        }
        if let Some(out) = &mut self.output {
            be.set_weight_products(&mut out.weight, products);
        }
        be.set_weight_products(&mut self.embed, products);
    }

    /// Prepares the optimizer step in the backward ([`Llama::forward_backward_stepping`]): the
    /// decoder layers' trainable tensors give up their own gradient buffers and borrow one
    /// shared set, shaped like a layer's tensors, during their layer's backward, so that the
    /// gradients of all layers never exist at once (torchtune's `optimizer_in_bwd`). The
    /// embedding, final norm and output projection keep theirs (the tied embedding gathers its
    /// gradient from both ends of the pass). Call after making tensors trainable.
    pub fn share_layer_gradients(&mut self, be: &B) -> Result<()> {
        if self.lent_grads.is_some() || self.layers.is_empty() {
            return Ok(());
        }
        let mut pool = Vec::new();
        visit_layer_params_mut(&mut self.layers[0], 0, &mut |_, mut p| {
            pool.push(be.zeros(p.state().len)?);
            Ok(())
        })?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let mut k = 0;
            visit_layer_params_mut(layer, i, &mut |name, mut p| {
                let s = p.state();
                if pool.get(k).is_none_or(|g| be.len(g) != s.len) {
                    return Err(Error::Input(format!(
                        "{name}: decoder layers differ in their trainable tensors, so they cannot share \
                         gradient buffers"
                    )));
                }
                s.grad = be.zeros(0)?;
                k += 1;
                Ok(())
            })?;
        }
        self.lent_grads = Some(pool);
        Ok(())
    }

    /// Adds LoRA adapters to the chosen projections, PEFT's default initialisation: A from
    /// `U(−1/√in, 1/√in)` (Kaiming-uniform with `a = √5`), B zero, so training starts at the
    /// base model. `rng` makes the initialisation reproducible.
    pub fn apply_lora(&mut self, be: &B, spec: &LoraSpec, rng: &mut Rng) -> Result<()> {
        if spec.rank == 0 {
            return Err(Error::Input("LoRA rank must be at least 1".into()));
        }
        let scale = spec.alpha / spec.rank as f32;
        let add = |be: &B, l: &mut Linear<B>, rng: &mut Rng| -> Result<()> {
            let (r, inf, outf) = (spec.rank, l.in_features, l.out_features);
            let bound = 1.0 / (inf as f64).sqrt();
            let a: Vec<f32> = (0..r * inf).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
            l.lora = Some(Lora {
                a: be.from_host(&a)?,
                b: be.zeros(outf * r)?,
                rank: r,
                scale,
                a_state: ParamState::new(be, r * inf)?,
                b_state: ParamState::new(be, outf * r)?,
                dropout: spec.dropout,
                dropout_seed: None,
            });
            Ok(())
        };
        for layer in &mut self.layers {
            for (name, l) in PROJECTIONS.iter().zip(layer.projections_mut()) {
                if spec.targets.iter().any(|t| name.ends_with(t.module_name())) {
                    add(be, l, rng)?;
                }
            }
        }
        if spec.targets.contains(&LoraTarget::Output) {
            match &mut self.output {
                Some(out) => add(be, out, rng)?,
                None => {
                    return Err(Error::Input(
                        "LoRA on the output projection needs an untied model: this one shares its output \
                         projection with the token embedding (Llama-3.2, SmolLM2); remove `output` from \
                         lora.target_modules"
                            .into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Every linear layer with its Hugging Face module name (without `.weight`).
    pub fn linears(&self) -> Vec<(String, &Linear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, l) in PROJECTIONS.iter().zip(layer.projections()) {
                out.push((format!("model.layers.{i}.{name}"), l));
            }
        }
        if let Some(o) = &self.output {
            out.push(("lm_head".into(), o));
        }
        out
    }

    /// Calls `f` with each trainable tensor's Hugging Face (or PEFT, for LoRA) name, in a fixed
    /// order.
    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_, B>) -> Result<()>) -> Result<()> {
        self.visit_embed_params_mut(f)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            visit_layer_params_mut(layer, i, f)?;
        }
        self.visit_head_params_mut(f)
    }

    /// [`Llama::visit_params_mut`] for the tensors outside the decoder layers: the embedding,
    /// the final norm and the output projection.
    pub fn visit_outer_params_mut(
        &mut self,
        f: &mut dyn FnMut(&str, ParamMut<'_, B>) -> Result<()>,
    ) -> Result<()> {
        self.visit_embed_params_mut(f)?;
        self.visit_head_params_mut(f)
    }

    fn visit_embed_params_mut(
        &mut self,
        f: &mut dyn FnMut(&str, ParamMut<'_, B>) -> Result<()>,
    ) -> Result<()> {
        match &mut self.embed_state {
            Some(s) => f("model.embed_tokens.weight", ParamMut::Weight(&mut self.embed, s)),
            None => Ok(()),
        }
    }

    fn visit_head_params_mut(
        &mut self,
        f: &mut dyn FnMut(&str, ParamMut<'_, B>) -> Result<()>,
    ) -> Result<()> {
        if let Some(s) = &mut self.norm.state {
            f("model.norm.weight", ParamMut::Buf(&mut self.norm.weight, s))?;
        }
        if let Some(o) = &mut self.output {
            visit_linear_params_mut("lm_head", o, f)?;
        }
        Ok(())
    }

    /// Turns LoRA dropout on with masks derived from `seed` (a different seed per micro-batch
    /// and adapter), or off with `None` (evaluation, generation).
    pub fn set_dropout_seed(&mut self, seed: Option<u64>) {
        let mut k = 0u64;
        let mut set = |l: &mut Linear<B>| {
            if let Some(lora) = &mut l.lora {
                lora.dropout_seed = seed.map(|s| s ^ (k + 1).wrapping_mul(0xA076_1D64_78BD_642F));
                k += 1;
            }
        };
        for layer in &mut self.layers {
            for l in layer.projections_mut() {
                set(l);
            }
        }
        if let Some(o) = &mut self.output {
            set(o);
        }
    }

    /// Runs `f` with LoRA dropout off (generation, or log-probabilities that must not depend on
    /// a dropout mask, inside a training step), then gives every adapter back the dropout seed
    /// it had.
    pub fn without_dropout<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let mut parked = Vec::new();
        for layer in &mut self.layers {
            for l in layer.projections_mut() {
                parked.push(l.lora.as_mut().and_then(|a| a.dropout_seed.take()));
            }
        }
        if let Some(o) = &mut self.output {
            parked.push(o.lora.as_mut().and_then(|a| a.dropout_seed.take()));
        }
        let result = f(self);
        let mut it = parked.into_iter();
        for layer in &mut self.layers {
            for l in layer.projections_mut() {
                let seed = it.next().flatten();
                if let Some(a) = l.lora.as_mut() {
                    a.dropout_seed = seed;
                }
            }
        }
        if let Some(o) = &mut self.output {
            let seed = it.next().flatten();
            if let Some(a) = o.lora.as_mut() {
                a.dropout_seed = seed;
            }
        }
        result
    }

    /// Sets every trainable tensor's gradient to zero.
    pub fn zero_grads(&mut self, be: &B) -> Result<()> {
        self.visit_params_mut(&mut |_, mut p| Ok(p.state().zero_grad(be)?))
    }

    /// Every tensor of the model as f32 with its Hugging Face name and shape (what a full
    /// checkpoint holds; LoRA adapters are not merged here, see [`Llama::merged_state_tensors`]).
    pub fn state_tensors(&self, be: &B) -> Result<Vec<NamedTensor>> {
        collect(self.lazy_state_tensors(be, false))
    }

    /// [`Llama::state_tensors`] without reading anything yet: each tensor is read from the
    /// backend when its `fetch` runs; with `merged`, every LoRA adapter is folded into its base
    /// weight then (`W + scale · B A`), leaving the model itself unchanged. Sorted by name.
    pub fn lazy_state_tensors<'a>(&'a self, be: &'a B, merged: bool) -> Vec<LazyTensor<'a>> {
        let mut out: Vec<LazyTensor<'a>> = self
            .tensors()
            .into_iter()
            .map(|t| {
                let fetch: Box<afinar_checkpoint::write::Fetch<'a>> = match t.source {
                    TensorRef::Norm(buf, n) => Box::new(move || host(be, buf, n).map_err(|e| e.to_string())),
                    TensorRef::Embedding(w) => {
                        Box::new(move || be.weight_to_host(w).map_err(|e| e.to_string()))
                    }
                    TensorRef::Matrix(_, l) => Box::new(move || {
                        let mut w = be.weight_to_host(&l.weight).map_err(|e| e.to_string())?;
                        if let (true, Some(lora)) = (merged, &l.lora) {
                            let (o, i) = (l.out_features, l.in_features);
                            let delta = (|| -> Result<Vec<f32>> {
                                let mut delta = be.zeros(o * i)?;
                                be.matmul(
                                    &lora.b, false, &lora.a, false, &mut delta, o, i, lora.rank, lora.scale,
                                    0.0,
                                )?;
                                Ok(be.to_host(&delta)?)
                            })()
                            .map_err(|e| e.to_string())?;
                            for (w, d) in w.iter_mut().zip(&delta) {
                                *w += d;
                            }
                        }
                        Ok(w)
                    }),
                };
                LazyTensor { name: t.name, shape: t.shape, fetch }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// LoRA matrices with their PEFT names (without the `base_model.model.` prefix) and shapes.
    pub fn lora_tensors(&self, be: &B) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        for (name, l) in self.linears() {
            if let Some(lora) = &l.lora {
                out.push((
                    format!("{name}.lora_A.weight"),
                    vec![lora.rank, l.in_features],
                    host(be, &lora.a, lora.rank * l.in_features)?,
                ));
                out.push((
                    format!("{name}.lora_B.weight"),
                    vec![l.out_features, lora.rank],
                    host(be, &lora.b, l.out_features * lora.rank)?,
                ));
            }
        }
        Ok(out)
    }
}

fn host<B: Backend>(be: &B, buf: &B::Buf, n: usize) -> Result<Vec<f32>> {
    let mut v = be.to_host(buf)?;
    v.truncate(n);
    Ok(v)
}

impl<B: Backend> Llama<B> {
    /// [`Llama::state_tensors`] with every LoRA adapter folded into its base weight
    /// (`W + scale · B A`), leaving the model itself unchanged.
    pub fn merged_state_tensors(&self, be: &B) -> Result<Vec<NamedTensor>> {
        collect(self.lazy_state_tensors(be, true))
    }
}

/// Reads every lazy tensor.
fn collect(lazy: Vec<LazyTensor<'_>>) -> Result<Vec<NamedTensor>> {
    lazy.into_iter()
        .map(|t| {
            let v = (t.fetch)().map_err(|e| crate::Error::Input(format!("reading {}: {e}", t.name)))?;
            Ok((t.name, t.shape, v))
        })
        .collect()
}

/// Calls `f` with each trainable tensor of a linear layer named `name`.
fn visit_linear_params_mut<B: Backend>(
    name: &str,
    l: &mut Linear<B>,
    f: &mut dyn FnMut(&str, ParamMut<'_, B>) -> Result<()>,
) -> Result<()> {
    if let Some(s) = &mut l.state {
        f(&format!("{name}.weight"), ParamMut::Weight(&mut l.weight, s))?;
    }
    if let Some(lora) = &mut l.lora {
        f(&format!("{name}.lora_A.weight"), ParamMut::Buf(&mut lora.a, &mut lora.a_state))?;
        f(&format!("{name}.lora_B.weight"), ParamMut::Buf(&mut lora.b, &mut lora.b_state))?;
    }
    Ok(())
}

/// Calls `f` with each trainable tensor of decoder layer `i`, in [`Llama::visit_params_mut`]'s
/// order.
pub(crate) fn visit_layer_params_mut<B: Backend>(
    layer: &mut DecoderLayer<B>,
    i: usize,
    f: &mut dyn FnMut(&str, ParamMut<'_, B>) -> Result<()>,
) -> Result<()> {
    let p = format!("model.layers.{i}");
    let norm =
        |name: &str, n: &mut RmsNorm<B>, f: &mut dyn FnMut(&str, ParamMut<'_, B>) -> Result<()>| match &mut n
            .state
        {
            Some(s) => f(&format!("{p}.{name}"), ParamMut::Buf(&mut n.weight, s)),
            None => Ok(()),
        };
    norm("input_layernorm.weight", &mut layer.attn_norm, f)?;
    for (name, l) in PROJECTIONS[..4].iter().zip(layer.attn.projections_mut()) {
        visit_linear_params_mut(&format!("{p}.{name}"), l, f)?;
    }
    if let Some(qk) = &mut layer.attn.qk_norm {
        norm("self_attn.q_norm.weight", &mut qk.q, f)?;
        norm("self_attn.k_norm.weight", &mut qk.k, f)?;
    }
    norm("post_attention_layernorm.weight", &mut layer.mlp_norm, f)?;
    for (name, l) in PROJECTIONS[4..].iter().zip(layer.mlp.projections_mut()) {
        visit_linear_params_mut(&format!("{p}.{name}"), l, f)?;
    }
    Ok(())
}

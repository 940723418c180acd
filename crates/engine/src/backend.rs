//! The interface between model code and the hardware.
//!
//! Model code (blocks, models, recipes) is written once against [`Backend`]; the CPU backend and
//! the CUDA backend implement it. Kernels are called with explicit sizes, llm.c style: buffers may
//! be longer than a call needs (they are planned once for the largest shape) and a kernel uses
//! their leading elements. Host-side index data (token ids, positions, targets, document ids) is
//! passed as plain slices; a device backend uploads it.

use afinar_formats::{ggml, nf4};

use crate::Result;

/// How a backend stores a weight matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// 32-bit floats (trainable weights, reference runs).
    F32,
    /// bfloat16, converted to f32 tile by tile inside the matmul (frozen weights).
    BF16,
    /// Block-quantized rows (frozen weights; see [`QuantFormat`]): GGUF blocks, or NF4 (QLoRA).
    Quant(QuantFormat),
}

/// A 16-bit floating-point storage format for [`Backend::Half`] buffers: activations kept for
/// the backward in mixed precision, caches, optimizer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HalfFormat {
    /// bfloat16: f32's exponent range, 8 significant bits.
    Bf16,
    /// IEEE binary16: 11 significant bits, magnitudes up to 65504.
    F16,
}

/// The precision of a matrix product's operands (sums are f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Products {
    /// f32 operands (TF32 on the CUDA backend, as its f32 products always are).
    #[default]
    F32,
    /// Operands rounded to bf16 with f32 accumulation, as `torch.autocast(bfloat16)` computes
    /// them (mixed precision); where a backend has no bf16 product unit it computes in f32.
    Bf16,
}

/// A block-quantized layout. The GGUF (GGML) ones store each row of a `[rows, cols]` matrix as
/// `cols / block_len` consecutive blocks ([`QuantFormat::block_len`]: 32 values, or 256 for the
/// super-blocks of [`QuantFormat::Q4_K`]), little-endian, exactly as in a GGUF file;
/// [`QuantFormat::Nf4`] is QLoRA's 4-bit NormalFloat with double-quantized scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// `d: f16`, `qs: [i8; 32]`; value `j` = `qs[j] · d` (34 bytes per block).
    Q8_0,
    /// `d: f16`, `qs: [u8; 16]`; value `j` = `d · (nibble_j − 8)`, element `j` in the low nibble
    /// of byte `j` and element `j + 16` in its high nibble (18 bytes per block).
    Q4_0,
    /// `d: f16`, `m: f16`, `qs: [u8; 16]`; value `j` = `d · nibble_j + m`, nibbles as in
    /// [`QuantFormat::Q4_0`] (20 bytes per block).
    Q4_1,
    /// llama.cpp's Q4_K (the bulk of its Q4_K_M files): super-blocks of 256 values, 144 bytes,
    /// `d: f16`, `dmin: f16`, `scales: [u8; 12]` (a 6-bit scale `sc_j` and a 6-bit min `m_j` for
    /// each of the 8 sub-blocks of 32, packed), `qs: [u8; 128]`; value `i` of sub-block
    /// `j = 2c + t` = `(d · sc_j) · q − (dmin · m_j)`, `q` nibble `t` (low first) of
    /// `qs[32c + i]`. `cols` must be a multiple of 256. About 4.5 bits per value.
    #[allow(non_camel_case_types)] // GGUF's name, as the other variants
    Q4_K,
    /// NF4 as QLoRA / bitsandbytes store it (`blocksize=64`, `compress_statistics=True`): 4-bit
    /// indices into the NF4 code book, two per byte (high nibble first), one absmax per 64
    /// values, the absmaxes themselves quantized to 8 bits in blocks of 256 after subtracting
    /// their mean. Not block-local: the matrix is one buffer of packed values, scale codes,
    /// nested scales and offset ([`afinar_formats::nf4`]); `cols` must be a multiple of 64. About
    /// 4.13 bits per value.
    Nf4,
}

impl QuantFormat {
    /// Values per block of the 32-value GGUF layouts (Q8_0, Q4_0, Q4_1); Q4_K's super-blocks
    /// and NF4's blocks have other [`QuantFormat::block_len`]s (256 and 64).
    pub const BLOCK: usize = ggml::BLOCK;

    /// Values per block: 32 for Q8_0, Q4_0 and Q4_1, 256 for Q4_K, 64 for NF4.
    pub fn block_len(self) -> usize {
        match self {
            QuantFormat::Nf4 => nf4::BLOCK,
            QuantFormat::Q4_K => ggml::K_BLOCK,
            QuantFormat::Q8_0 | QuantFormat::Q4_0 | QuantFormat::Q4_1 => Self::BLOCK,
        }
    }

    /// Bytes per block (for NF4, the 32 bytes of packed values; its scales are stored apart).
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q8_0 => ggml::Q8_0_BYTES,
            QuantFormat::Q4_0 => ggml::Q4_0_BYTES,
            QuantFormat::Q4_1 => ggml::Q4_1_BYTES,
            QuantFormat::Q4_K => ggml::Q4_K_BYTES,
            QuantFormat::Nf4 => nf4::BLOCK / 2,
        }
    }

    /// Bytes of one row of `cols` values, `None` unless `cols` is a whole number of blocks (for
    /// NF4, the packed values only: use [`QuantFormat::matrix_bytes`] for the whole matrix).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let b = self.block_len();
        cols.is_multiple_of(b).then(|| cols / b * self.block_bytes())
    }

    /// Bytes of a whole `[rows, cols]` matrix, `None` unless `cols` is a whole number of blocks
    /// (or the size overflows).
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> Option<usize> {
        match self {
            QuantFormat::Nf4 => afinar_formats::nf4::matrix_bytes(rows, cols),
            _ => self.row_bytes(cols)?.checked_mul(rows),
        }
    }

    /// The type name (`"q8_0"`, `"q4_0"`, `"q4_1"`, `"q4_k"` as in GGUF; `"nf4"`).
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4_0 => "q4_0",
            QuantFormat::Q4_1 => "q4_1",
            QuantFormat::Q4_K => "q4_k",
            QuantFormat::Nf4 => "nf4",
        }
    }
}

/// Sizes of one attention call.
///
/// `q` is `[batch, q_len, q_heads, head_dim]`; `k` and `v` are
/// `[batch, kv_stride, kv_heads, head_dim]` of which the first `kv_len` positions hold data (a KV
/// cache has `kv_stride` = its capacity). Query `t` sits at absolute position `q_offset + t` and
/// attends to keys `s <= q_offset + t` (causal). `q_heads` is a multiple of `kv_heads`
/// (grouped-query attention: query head `h` reads kv head `h / (q_heads / kv_heads)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnDims {
    /// Number of sequences.
    pub batch: usize,
    /// Queries per sequence.
    pub q_len: usize,
    /// Valid keys per sequence (`q_offset + q_len` for causal self-attention).
    pub kv_len: usize,
    /// Positions allocated per sequence in `k` and `v` (≥ `kv_len`).
    pub kv_stride: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Absolute position of the first query.
    pub q_offset: usize,
    /// Softmax scale, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

/// Hyper-parameters of one AdamW step, with `torch.optim.AdamW` semantics (decoupled weight
/// decay, bias-corrected moments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Step number, from 1 (for the bias corrections).
    pub step: u64,
}

/// The per-step scalars of an AdamW update, computed once on the host so that every backend
/// applies the same ones: `p ← p · decay − step_size · m / (√v / bc2_sqrt + eps)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    /// `1 − lr · weight_decay`.
    pub decay: f32,
    /// `lr / (1 − β₁ᵗ)` (computed in f64).
    pub step_size: f32,
    /// `√(1 − β₂ᵗ)` (computed in f64).
    pub bc2_sqrt: f32,
}

impl AdamW {
    /// This step's scalars, in the order `torch.optim.AdamW` computes them.
    pub fn scalars(&self) -> AdamWScalars {
        let step = self.step.max(1) as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(step);
        let bc2 = 1.0 - (self.beta2 as f64).powi(step);
        AdamWScalars {
            decay: 1.0 - self.lr * self.weight_decay,
            step_size: (self.lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }
}

/// How [`Backend::linear_distill`] compares the student's next-token distribution `pS` with the
/// teacher's `pT` (both softmaxes of logits divided by the temperature), per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Divergence {
    /// `−Σ pT · log pS`: the student's cross-entropy under the teacher, exactly what torchtune
    /// 0.6.1's `ForwardKLLoss` sums (it equals `KL(pT ‖ pS)` plus the teacher's entropy, a
    /// constant, so the gradient is the forward KL's).
    ForwardKl,
    /// `KL(pS ‖ pT) = Σ pS · (log pS − log pT)`, torchtune 0.6.1's `ReverseKLLoss`.
    ReverseKl,
    /// The generalised Jensen–Shannon divergence of TRL's GKD (`generalized_jsd_loss`) at
    /// `β = 0.5`: with `M = ½ pS + ½ pT`, `½ KL(pT ‖ M) + ½ KL(pS ‖ M)` (the symmetric JSD).
    Jsd,
}

/// What one [`Backend::linear_distill`] call computes and how it weights the gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillSpec {
    /// The divergence between the tempered distributions.
    pub divergence: Divergence,
    /// Both logits are divided by it before their softmaxes (`> 0`; 1 is torchtune's loss, which
    /// has no temperature). The divergence is *not* multiplied by `T²` (as TRL's GKD; Hinton's
    /// `T²` factor, if wanted, goes into `kd_grad_scale` and the caller's loss).
    pub temperature: f32,
    /// Weight of the summed divergence in the gradient written to `dh`/`dw`.
    pub kd_grad_scale: f32,
    /// Weight of the summed student cross-entropy against the targets (on the untempered
    /// student logits) in the same gradient; 0 leaves it out (its sum is still returned).
    pub ce_grad_scale: f32,
}

/// The sums [`Backend::linear_distill`] returns, over the rows whose target is not -100.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DistillSums {
    /// Σ of the per-row divergences.
    pub kd: f64,
    /// Σ of the per-row student cross-entropies (`logsumexp(s) − s[target]`, untempered).
    pub ce: f64,
    /// Rows kept (target ≠ -100).
    pub count: usize,
}

/// Everything model code needs from a device: memory, and a forward and a backward kernel for
/// each operation of a Llama-style decoder.
///
/// Unless a method says otherwise, outputs are overwritten. Backward kernels *accumulate* into
/// parameter gradients (`dw`, `dtable`) so that micro-batches add up.
pub trait Backend: Send + Sync + 'static {
    /// A device buffer of activations (f32 semantics).
    type Buf: Send + Sync;
    /// A weight matrix `[rows, cols]` in some [`WeightFormat`].
    type Weight: Send + Sync;
    /// A device buffer of 16-bit floats in one [`HalfFormat`] (storage only: kernels take
    /// [`Backend::Buf`]s; values move between the two with [`Backend::to_half`] and
    /// [`Backend::from_half`]).
    type Half: Send + Sync;

    /// Human-readable device name, e.g. `"cpu (2 threads, avx2; capped from avx512 by AFINAR_CPU_LEVEL)"`.
    fn name(&self) -> String;

    /// Runs `f`, a sequence of many kernel calls, where they are cheapest to issue one after
    /// another: the CPU backend runs it on its own thread pool, so that each kernel call does
    /// not wake the pool from outside (which costs microseconds per call: it dominates decoding
    /// one token). The default just calls `f`.
    fn scoped<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Sets the precision of the products with weight `w` ([`Backend::linear`],
    /// [`Backend::linear_backward_input`], [`Backend::linear_cross_entropy`]): a property of the
    /// weight, [`Products::F32`] when it is created. [`Products::Bf16`] on an f32 weight is mixed
    /// precision (full fine-tuning with `model.dtype: bf16`): the weight, its gradient and the
    /// optimizer state stay f32. The CPU backend honours it where the processor has bf16 products
    /// (AMX tiles, else AVX512-BF16 dot products; level `avx512_bf16` or above) and stays f32
    /// elsewhere (AVX2, AVX-512 without BF16); the CUDA backend runs f32 products in TF32 either way, so the
    /// default keeps nothing.
    fn set_weight_products(&self, _w: &mut Self::Weight, _products: Products) {}

    /// The precision set by [`Backend::set_weight_products`] (always [`Products::F32`] on a
    /// backend that keeps none).
    fn weight_products(&self, _w: &Self::Weight) -> Products {
        Products::F32
    }

    /// Peak bytes of device memory held by the backend's buffers so far, where the device keeps
    /// such a count (the CUDA backend); `None` where process memory is the measure (CPU).
    fn peak_memory(&self) -> Option<u64> {
        None
    }

    // ---- memory -------------------------------------------------------------------------------

    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `data`.
    #[allow(clippy::wrong_self_convention)]
    fn from_host(&self, data: &[f32]) -> Result<Self::Buf>;
    /// The buffer's contents as f32.
    fn to_host(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Number of elements in `buf`.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// `dst[dst_off..dst_off + n] = src[src_off..src_off + n]`.
    fn copy(
        &self,
        src: &Self::Buf,
        src_off: usize,
        dst: &mut Self::Buf,
        dst_off: usize,
        n: usize,
    ) -> Result<()>;
    /// Sets the first `n` elements of `buf` to `value`.
    fn fill(&self, buf: &mut Self::Buf, n: usize, value: f32) -> Result<()>;
    /// A zero-filled 16-bit buffer of `len` elements in `format`.
    fn zeros_half(&self, len: usize, format: HalfFormat) -> Result<Self::Half>;
    /// Number of elements and format of a 16-bit buffer.
    fn half_shape(&self, buf: &Self::Half) -> (usize, HalfFormat);
    /// `dst[dst_off..dst_off + n] = round(src[src_off..src_off + n])`, rounding to nearest even
    /// (as PyTorch's `.to(bfloat16 | float16)`; f16 overflows to ±∞).
    fn to_half(
        &self,
        src: &Self::Buf,
        src_off: usize,
        dst: &mut Self::Half,
        dst_off: usize,
        n: usize,
    ) -> Result<()>;
    /// `dst[dst_off..dst_off + n] = src[src_off..src_off + n]` widened to f32 (exact).
    #[allow(clippy::wrong_self_convention)]
    fn from_half(
        &self,
        src: &Self::Half,
        src_off: usize,
        dst: &mut Self::Buf,
        dst_off: usize,
        n: usize,
    ) -> Result<()>;
    /// Uploads a `[rows, cols]` row-major matrix as a weight in `format` (quantized formats
    /// round the values to their blocks, as GGUF's reference quantizers do).
    fn weight(&self, data: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<Self::Weight>;
    /// Uploads a `[rows, cols]` matrix stored as GGUF blocks of `format` (`blocks`: the row-major
    /// bytes as in the file, `rows · cols / block_len` blocks), or an NF4 buffer
    /// ([`QuantFormat::Nf4`]), keeping it quantized (a backend without kernels for a format may
    /// store it dequantized: the CUDA backend keeps [`QuantFormat::Q4_K`] as bf16). Errors
    /// unless `cols` is a whole number of blocks and `blocks` has exactly
    /// [`QuantFormat::matrix_bytes`].
    fn weight_quantized(
        &self,
        blocks: &[u8],
        format: QuantFormat,
        rows: usize,
        cols: usize,
    ) -> Result<Self::Weight>;
    /// `(rows, cols)` of a weight.
    fn weight_shape(&self, w: &Self::Weight) -> (usize, usize);
    /// How a weight is stored.
    fn weight_format(&self, w: &Self::Weight) -> WeightFormat;
    /// A weight's values as f32 (after its format's rounding).
    fn weight_to_host(&self, w: &Self::Weight) -> Result<Vec<f32>>;
    /// The stored bytes of a weight kept quantized ([`WeightFormat::Quant`]), in the layout
    /// [`Backend::weight_quantized`] takes, so that an export can copy them instead of
    /// quantizing its f32 values again; `None` for float weights, or where the backend cannot
    /// give them (the default).
    fn weight_quantized_data(&self, _w: &Self::Weight) -> Result<Option<(QuantFormat, Vec<u8>)>> {
        Ok(None)
    }

    // ---- matrix products ----------------------------------------------------------------------

    /// `y[rows, out] (+)= x[rows, in] · Wᵀ` for `W: [out, in]`; adds into `y` when `accumulate`.
    fn linear(
        &self,
        x: &Self::Buf,
        w: &Self::Weight,
        y: &mut Self::Buf,
        rows: usize,
        accumulate: bool,
    ) -> Result<()>;
    /// `dx[rows, in] (+)= dy[rows, out] · W`; the input gradient of [`Backend::linear`].
    fn linear_backward_input(
        &self,
        dy: &Self::Buf,
        w: &Self::Weight,
        dx: &mut Self::Buf,
        rows: usize,
        accumulate: bool,
    ) -> Result<()>;
    /// `dw[out, in] (+)= dy[rows, out]ᵀ · x[rows, in]`; the weight gradient of
    /// [`Backend::linear`], with operands in the precision `products` says (the weight's
    /// [`Backend::weight_products`], for the layer's own gradient). When `accumulate` is false
    /// the old contents of `dw` are not read.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_weight(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        dw: &mut Self::Buf,
        rows: usize,
        out: usize,
        inp: usize,
        products: Products,
        accumulate: bool,
    ) -> Result<()>;
    /// General product `c[m, n] = alpha · op(a) · op(b) + beta · c`, where `op(a)` is `[m, k]`
    /// (stored `[k, m]` when `ta`) and `op(b)` is `[k, n]` (stored `[n, k]` when `tb`), in f32
    /// (a linear layer's weight gradient is [`Backend::linear_backward_weight`]).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        a: &Self::Buf,
        ta: bool,
        b: &Self::Buf,
        tb: bool,
        c: &mut Self::Buf,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()>;

    // ---- elementwise --------------------------------------------------------------------------

    /// `y[..n] += x[..n]` (residual connections, gradient sums).
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf, n: usize) -> Result<()>;
    /// `y[..n] *= s`.
    fn scale(&self, y: &mut Self::Buf, n: usize, s: f32) -> Result<()>;

    // ---- layers -------------------------------------------------------------------------------

    /// `out[i, :] = table[ids[i], :]` for a `[vocab, dim]` table.
    fn embedding(&self, ids: &[u32], table: &Self::Weight, out: &mut Self::Buf) -> Result<()>;
    /// `dtable[ids[i], :] += dout[i, :]`.
    fn embedding_backward(
        &self,
        ids: &[u32],
        dout: &Self::Buf,
        dtable: &mut Self::Buf,
        dim: usize,
    ) -> Result<()>;

    /// RMSNorm over rows of `x[rows, dim]`: `out = x · rstd · w` with
    /// `rstd = 1 / sqrt(mean(x²) + eps)` saved per row for the backward.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// Backward of [`Backend::rmsnorm`]: `dx (+)= ∂L/∂x` (adds when `accumulate`, so the
    /// residual stream's gradient can flow through unchanged), `dw += ∂L/∂w` when given.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        dx: &mut Self::Buf,
        dw: Option<&mut Self::Buf>,
        rows: usize,
        dim: usize,
        accumulate: bool,
    ) -> Result<()>;

    /// Rotates `x[tokens, heads, head_dim]` in place by `positions[token] · inv_freq[i]`,
    /// pairing `(x[i], x[i + head_dim/2])`. With `inverse`, rotates by the negative angle, which
    /// is the backward of the forward rotation.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Self::Buf,
        positions: &[u32],
        inv_freq: &[f32],
        tokens: usize,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    ) -> Result<()>;

    /// SwiGLU gate: `out = silu(gate) · up` over `n` elements.
    fn swiglu(&self, gate: &Self::Buf, up: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()>;
    /// Backward of [`Backend::swiglu`]: overwrites `dgate` and `dup`.
    fn swiglu_backward(
        &self,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        n: usize,
    ) -> Result<()>;

    /// Causal grouped-query attention (see [`AttnDims`]), writing `out[batch, q_len, q_heads,
    /// head_dim]` and the softmax log-sum-exp per query `lse[batch, q_heads, q_len]` for the
    /// backward. With `doc_ids` (`[batch, kv_len]`, packed sequences), a query also only sees
    /// keys of its own document (block-causal). Never materialises a `q_len × kv_len` matrix
    /// beyond one tile.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        dims: &AttnDims,
        doc_ids: Option<&[u32]>,
    ) -> Result<()>;
    /// Backward of [`Backend::attention`]: overwrites `dq`, `dk`, `dv` (shaped like `q`, `k`, `v`).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dims: &AttnDims,
        doc_ids: Option<&[u32]>,
    ) -> Result<()>;

    /// [`Backend::attention`] with the keys and values in 16-bit buffers (a KV cache stored in a
    /// [`HalfFormat`]), laid out as there (`[batch, kv_stride, kv_heads, head_dim]`). Writes `out`
    /// and `lse` as [`Backend::attention`] does on the same values widened to f32. The default
    /// widens the `kv_len` valid positions of each sequence into f32 buffers and calls
    /// [`Backend::attention`]; the CPU backend reads f16 caches directly when decoding.
    #[allow(clippy::too_many_arguments)]
    fn attention_half(
        &self,
        q: &Self::Buf,
        k: &Self::Half,
        v: &Self::Half,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        dims: &AttnDims,
        doc_ids: Option<&[u32]>,
    ) -> Result<()> {
        let w = dims.kv_heads.checked_mul(dims.head_dim).ok_or_else(|| crate::EngineError::Shape {
            op: "attention_half",
            what: format!("{} kv heads of {} overflow", dims.kv_heads, dims.head_dim),
        })?;
        if dims.kv_len > dims.kv_stride {
            return Err(crate::EngineError::Shape {
                op: "attention_half",
                what: format!("kv_len {} > kv_stride {}", dims.kv_len, dims.kv_stride),
            });
        }
        let n = dims.kv_len * w;
        let mut kf = self.zeros((dims.batch * n).max(1))?;
        let mut vf = self.zeros((dims.batch * n).max(1))?;
        for b in 0..dims.batch {
            if n > 0 {
                self.from_half(k, b * dims.kv_stride * w, &mut kf, b * n, n)?;
                self.from_half(v, b * dims.kv_stride * w, &mut vf, b * n, n)?;
            }
        }
        let dense = AttnDims { kv_stride: dims.kv_len, ..*dims };
        self.attention(q, &kf, &vf, out, lse, &dense, doc_ids)
    }

    /// Softmax cross-entropy of `logits[rows, vocab]` against `targets` (-100 = ignored, loss 0).
    /// Writes per-row losses; when `dlogits` is given, writes `grad_scale · (softmax − onehot)`
    /// there (zero rows for ignored targets). `dlogits` may not alias `logits`.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        logits: &Self::Buf,
        targets: &[i32],
        losses: &mut Self::Buf,
        dlogits: Option<&mut Self::Buf>,
        rows: usize,
        vocab: usize,
        grad_scale: f32,
    ) -> Result<()>;

    /// Output projection fused with cross-entropy, in chunks of rows so that the full
    /// `[rows, vocab]` logits never exist at once: logits = `h[rows, dim] · Wᵀ`, `W: [vocab, dim]`.
    /// Returns the sum of losses over non-ignored rows and their count. When `dh` is given,
    /// writes `∂(grad_scale · Σ loss)/∂h` into it; when `dw` is given (`[vocab, dim]`),
    /// accumulates the weight gradient into it.
    #[allow(clippy::too_many_arguments)]
    fn linear_cross_entropy(
        &self,
        h: &Self::Buf,
        w: &Self::Weight,
        targets: &[i32],
        rows: usize,
        grad_scale: f32,
        dh: Option<&mut Self::Buf>,
        dw: Option<&mut Self::Buf>,
    ) -> Result<(f64, usize)>;

    /// Knowledge distillation head: the student's output projection `s = hs[rows, dim] · Wsᵀ`
    /// (`ws: [vocab, dim]`) and the frozen teacher's `t = ht[rows, dim_t] · Wtᵀ` (`wt: [vocab,
    /// dim_t]`, any [`WeightFormat`]; the vocabularies must match, the widths need not), fused
    /// with the per-row [`Divergence`] of their tempered softmaxes and the student's
    /// cross-entropy against `targets`, in chunks of rows so that no `[rows, vocab]` logits
    /// exist at once. Rows with target -100 contribute nothing. Returns the sums over the kept
    /// rows ([`DistillSums`]). When `dh` is given, writes `∂(kd_grad_scale · Σ kd +
    /// ce_grad_scale · Σ ce)/∂hs` into it; when `dw` is given (`[vocab, dim]`), accumulates
    /// that objective's gradient with respect to `Ws` (a trainable student head). The teacher
    /// gets no gradient.
    #[allow(clippy::too_many_arguments)]
    fn linear_distill(
        &self,
        hs: &Self::Buf,
        ws: &Self::Weight,
        ht: &Self::Buf,
        wt: &Self::Weight,
        targets: &[i32],
        rows: usize,
        spec: &DistillSpec,
        dh: Option<&mut Self::Buf>,
        dw: Option<&mut Self::Buf>,
    ) -> Result<DistillSums>;

    /// Per-row log-probabilities of `targets` under `softmax(h[rows, dim] · Wᵀ)`, `W: [vocab, dim]`,
    /// computed as [`Backend::linear_cross_entropy`] does (chunks of rows, never the full
    /// `[rows, vocab]` logits): `logp[r] = logit[r, target_r] − logsumexp(logits[r])`, 0 for
    /// ignored rows (-100). Returned on the host (one value per row).
    fn linear_log_probs(
        &self,
        h: &Self::Buf,
        w: &Self::Weight,
        targets: &[i32],
        rows: usize,
    ) -> Result<Vec<f32>>;

    /// Backward of [`Backend::linear_log_probs`] for an upstream gradient `upstream[r] = ∂L/∂logp[r]`
    /// (host, `[rows]`; ignored rows contribute nothing): writes `∂L/∂h` into `dh` when given and
    /// accumulates `∂L/∂W` into `dw` (`[vocab, dim]`) when given. Recomputes the logits.
    #[allow(clippy::too_many_arguments)]
    fn linear_log_probs_backward(
        &self,
        h: &Self::Buf,
        w: &Self::Weight,
        targets: &[i32],
        rows: usize,
        upstream: &[f32],
        dh: Option<&mut Self::Buf>,
        dw: Option<&mut Self::Buf>,
    ) -> Result<()>;

    // ---- optimisation -------------------------------------------------------------------------

    /// One AdamW step on `param[..n]` with gradient `grad` and moments `m`, `v` (updated).
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        n: usize,
        hp: &AdamW,
    ) -> Result<()>;
    /// One AdamW step on a trainable weight (formats that cannot be trained give an error).
    fn adamw_weight(
        &self,
        w: &mut Self::Weight,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: &AdamW,
    ) -> Result<()>;
    /// `Σ x[i]²` over `x[..n]`, accumulated in f64 (gradient-norm clipping).
    fn sum_squares(&self, x: &Self::Buf, n: usize) -> Result<f64>;
    /// Inverted dropout: `out[i] = x[i] · keep(seed, i) / (1 − p)` where `keep` is a hash of
    /// `(seed, i)`, so the same seed gives the same mask on every backend and the backward is
    /// the same call on the output gradient.
    fn dropout(&self, x: &Self::Buf, out: &mut Self::Buf, n: usize, p: f32, seed: u64) -> Result<()>;
}

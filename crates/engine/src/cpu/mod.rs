//! The CPU backend: f32 activations in `Vec<f32>`, weights in f32, bf16 or GGUF blocks
//! ([`quant`]), matrix products through the `gemm` crate and every other kernel parallelised with rayon on the backend's own
//! thread pool.
//!
//! The kernels live one family per file as functions generic over [`Real`] (`f32` and `f64`),
//! forward and backward side by side, so that the tests can check every backward against finite
//! differences in f64. [`CpuBackend`] checks shapes, then calls their `f32` instances.

pub mod amx;
pub mod attention;
pub mod distill;
pub mod elementwise;
pub mod embedding;
pub mod features;
pub mod float;
pub mod gemv;
pub mod half_buf;
pub mod loss;
pub mod matmul;
pub mod nf4;
pub mod norm;
pub mod optim;
pub mod quant;
pub mod rope;
pub mod small_gemm;
pub mod swiglu;
pub mod vector;

pub use float::Real;

use crate::checks::{self, each, mul, need};
use crate::error::ensure;
use crate::{
    AdamW, AttnDims, Backend, DistillSpec, DistillSums, EngineError, HalfFormat, Products, QuantFormat,
    Result, WeightFormat,
};
use attention::{AttnBwdMode, AttnTiles};
use half::bf16;
use half_buf::CpuHalf;
use matmul::WeightRef;
use quant::QuantRef;

/// `len` zeros from the allocator's zeroed memory (`calloc`): large buffers arrive as fresh
/// pages that become resident only when written, so a buffer that is allocated but never used
/// (or freed before use) costs no memory. `None` when the allocation fails.
///
/// # Safety
/// The all-zero bit pattern must be a valid `T` (the float types here).
unsafe fn zeroed_vec<T>(len: usize) -> Option<Vec<T>> {
    let layout = std::alloc::Layout::array::<T>(len).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout has a non-zero size; the memory is zeroed, which the caller promises is
    // a valid `T`, and `Vec` frees it with the same layout (capacity `len` of `T`).
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<T>();
        (!p.is_null()).then(|| Vec::from_raw_parts(p, len, len))
    }
}

/// Storage of a [`CpuWeight`].
#[derive(Debug, Clone, PartialEq)]
pub enum CpuWeightData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// bfloat16 (round-to-nearest-even from the uploaded f32 values).
    BF16(Vec<bf16>),
    /// GGUF blocks of `format`, row-major (each row `cols / block_len` blocks), or an NF4 buffer
    /// ([`nf4`]); frozen.
    Quant {
        /// Block layout.
        format: QuantFormat,
        /// The blocks.
        blocks: Vec<u8>,
    },
}

/// A `[rows, cols]` row-major weight matrix held by the [`CpuBackend`].
#[derive(Debug, Clone, PartialEq)]
pub struct CpuWeight {
    rows: usize,
    cols: usize,
    data: CpuWeightData,
    /// Precision of the products with it ([`Backend::set_weight_products`]).
    products: Products,
}

impl CpuWeight {
    /// Wraps stored data; fails unless it holds exactly `rows × cols` values (for blocks:
    /// `cols` a multiple of 32 and exactly `rows` rows of blocks).
    pub fn new(data: CpuWeightData, rows: usize, cols: usize) -> Result<Self> {
        let n = mul("weight", &[rows, cols])?;
        match &data {
            CpuWeightData::F32(d) => check_len(d.len(), n, rows, cols)?,
            CpuWeightData::BF16(d) => check_len(d.len(), n, rows, cols)?,
            CpuWeightData::Quant { format, blocks } => {
                crate::quant::check_quant_len(*format, rows, cols, blocks.len())?;
            }
        }
        Ok(CpuWeight { rows, cols, data, products: Products::F32 })
    }

    /// Number of rows (`out` of a linear layer, `vocab` of an embedding).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (`in` of a linear layer, `dim` of an embedding).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        match self.data {
            CpuWeightData::F32(_) => WeightFormat::F32,
            CpuWeightData::BF16(_) => WeightFormat::BF16,
            CpuWeightData::Quant { format, .. } => WeightFormat::Quant(format),
        }
    }

    /// The stored data.
    pub fn data(&self) -> &CpuWeightData {
        &self.data
    }

    /// A borrowed view for the generic kernels.
    pub fn as_ref(&self) -> WeightRef<'_, f32> {
        match &self.data {
            CpuWeightData::F32(d) => WeightRef::Dense(d),
            CpuWeightData::BF16(d) => WeightRef::Bf16(d),
            CpuWeightData::Quant { format, blocks } => {
                WeightRef::Quant(QuantRef { format: *format, data: blocks, rows: self.rows, cols: self.cols })
            }
        }
    }
}

fn check_len(len: usize, n: usize, rows: usize, cols: usize) -> Result<()> {
    ensure(len == n, "weight", || format!("{len} values for a [{rows}, {cols}] weight"))
}

/// The CPU implementation of [`Backend`].
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("threads", &self.threads)
            .field("cpu_level", &features::level())
            .finish()
    }
}

impl Default for CpuBackend {
    /// A backend using all cores.
    fn default() -> Self {
        Self::new(None)
    }
}

/// Smallest product (`out · in · rows`) a [`Products::Bf16`] weight gradient takes to the bf16
/// units (AMX or AVX512-BF16);
/// smaller ones stay in f32.
const MIXED_MIN_WORK: usize = 1 << 20;

impl CpuBackend {
    /// Largest number of rows that GGUF block-quantized products take through the int8 GEMV
    /// ([`gemv::QUANT_GEMV_MAX_ROWS`]); more rows go through dequantized tiles.
    pub const QUANT_GEMV_MAX_ROWS: usize = gemv::QUANT_GEMV_MAX_ROWS;

    /// A backend running on its own pool of `threads` threads (`None`: one per available core).
    /// What callers that report errors use: [`CpuBackend::try_new`].
    ///
    /// # Panics
    /// When the operating system cannot start the threads, or when `AFINAR_CPU_LEVEL` holds
    /// something else than a CPU level (see [`features`]).
    pub fn new(threads: Option<usize>) -> Self {
        Self::try_new(threads).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`CpuBackend::new`] that reports its failures: an `AFINAR_CPU_LEVEL` that names no CPU
    /// level (the message names the variable and the accepted values), or threads that the
    /// operating system cannot start.
    pub fn try_new(threads: Option<usize>) -> Result<Self> {
        features::check_env().map_err(EngineError::Unsupported)?;
        let threads =
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("afinar-cpu-{i}"))
            .build()
            .map_err(|e| {
                EngineError::Device(format!("failed to start the CPU backend's {threads} threads: {e}"))
            })?;
        Ok(CpuBackend { pool, threads })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on the backend's thread pool (rayon calls inside use its threads).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;
    type Half = CpuHalf;

    fn name(&self) -> String {
        format!(
            "cpu ({} thread{}, {})",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            features::describe()
        )
    }

    fn scoped<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.install(f)
    }

    fn set_weight_products(&self, w: &mut CpuWeight, products: Products) {
        w.products = products;
    }

    fn weight_products(&self, w: &CpuWeight) -> Products {
        w.products
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        // SAFETY: all-zero bytes are the f32 value 0.0.
        unsafe { zeroed_vec(len) }
            .ok_or_else(|| EngineError::OutOfMemory { bytes: len.saturating_mul(4), device: self.name() })
    }

    fn from_host(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn to_host(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn copy(
        &self,
        src: &Vec<f32>,
        src_off: usize,
        dst: &mut Vec<f32>,
        dst_off: usize,
        n: usize,
    ) -> Result<()> {
        checks::ranges("copy", src.len(), src_off, dst.len(), dst_off, n)?;
        dst[dst_off..dst_off + n].copy_from_slice(&src[src_off..src_off + n]);
        Ok(())
    }

    fn fill(&self, buf: &mut Vec<f32>, n: usize, value: f32) -> Result<()> {
        need("fill", "buf", buf.len(), n)?;
        buf[..n].fill(value);
        Ok(())
    }

    fn zeros_half(&self, len: usize, format: HalfFormat) -> Result<CpuHalf> {
        let oom = || EngineError::OutOfMemory { bytes: len.saturating_mul(2), device: self.name() };
        // SAFETY: all-zero bytes are the value 0 in both formats.
        Ok(match format {
            HalfFormat::Bf16 => CpuHalf::Bf16(unsafe { zeroed_vec(len) }.ok_or_else(oom)?),
            HalfFormat::F16 => CpuHalf::F16(unsafe { zeroed_vec(len) }.ok_or_else(oom)?),
        })
    }

    fn half_shape(&self, buf: &CpuHalf) -> (usize, HalfFormat) {
        (buf.len(), buf.format())
    }

    fn to_half(
        &self,
        src: &Vec<f32>,
        src_off: usize,
        dst: &mut CpuHalf,
        dst_off: usize,
        n: usize,
    ) -> Result<()> {
        checks::ranges("to_half", src.len(), src_off, dst.len(), dst_off, n)?;
        self.install(|| half_buf::narrow(&src[src_off..src_off + n], dst, dst_off));
        Ok(())
    }

    fn from_half(
        &self,
        src: &CpuHalf,
        src_off: usize,
        dst: &mut Vec<f32>,
        dst_off: usize,
        n: usize,
    ) -> Result<()> {
        checks::ranges("from_half", src.len(), src_off, dst.len(), dst_off, n)?;
        self.install(|| half_buf::widen(src, src_off, &mut dst[dst_off..dst_off + n]));
        Ok(())
    }

    fn weight(&self, data: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<CpuWeight> {
        let n = mul("weight", &[rows, cols])?;
        ensure(data.len() == n, "weight", || format!("{} values for a [{rows}, {cols}] weight", data.len()))?;
        let data = match format {
            WeightFormat::F32 => CpuWeightData::F32(data.to_vec()),
            WeightFormat::BF16 => CpuWeightData::BF16(data.iter().map(|&x| bf16::from_f32(x)).collect()),
            WeightFormat::Quant(format) => {
                let blocks = self.install(|| crate::quant::quantize(format, data, rows, cols))?;
                CpuWeightData::Quant { format, blocks }
            }
        };
        CpuWeight::new(data, rows, cols)
    }

    fn weight_quantized(
        &self,
        blocks: &[u8],
        format: QuantFormat,
        rows: usize,
        cols: usize,
    ) -> Result<CpuWeight> {
        CpuWeight::new(CpuWeightData::Quant { format, blocks: blocks.to_vec() }, rows, cols)
    }

    fn weight_shape(&self, w: &CpuWeight) -> (usize, usize) {
        (w.rows, w.cols)
    }

    fn weight_to_host(&self, w: &CpuWeight) -> Result<Vec<f32>> {
        Ok(match &w.data {
            CpuWeightData::F32(d) => d.clone(),
            CpuWeightData::BF16(d) => d.iter().map(|x| x.to_f32()).collect(),
            CpuWeightData::Quant { format, blocks } => {
                self.install(|| crate::quant::dequantize(*format, blocks, w.rows, w.cols))?
            }
        })
    }

    fn weight_quantized_data(&self, w: &CpuWeight) -> Result<Option<(QuantFormat, Vec<u8>)>> {
        Ok(match &w.data {
            CpuWeightData::Quant { format, blocks } => Some((*format, blocks.clone())),
            _ => None,
        })
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        w: &CpuWeight,
        y: &mut Vec<f32>,
        rows: usize,
        accumulate: bool,
    ) -> Result<()> {
        checks::product("linear", ("x", x.len()), ("y", y.len()), rows, w.cols, w.rows)?;
        let (out, inp) = (w.rows, w.cols);
        // Few rows (decode) stream the weight once; on GGUF blocks a short prompt too, where int8
        // dot products beat dequantizing the weight.
        let gemv_rows = match &w.data {
            CpuWeightData::Quant { format, .. } if *format != QuantFormat::Nf4 => gemv::QUANT_GEMV_MAX_ROWS,
            _ => gemv::GEMV_MAX_ROWS,
        };
        self.install(|| match &w.data {
            _ if rows <= gemv_rows => gemv::linear_gemv(x, w.as_ref(), y, rows, out, inp, accumulate),
            CpuWeightData::BF16(d) if amx::bf16_products() => {
                amx::linear_forward(x, d, y, rows, out, inp, accumulate)
            }
            CpuWeightData::F32(d) if amx::bf16_products() && w.products == Products::Bf16 => {
                amx::matmul_packed(x, &amx::pack_linear_f32(d, out, inp), y, rows, accumulate)
            }
            _ => matmul::linear_forward(x, w.as_ref(), y, rows, out, inp, accumulate),
        });
        Ok(())
    }

    fn linear_backward_input(
        &self,
        dy: &Vec<f32>,
        w: &CpuWeight,
        dx: &mut Vec<f32>,
        rows: usize,
        accumulate: bool,
    ) -> Result<()> {
        checks::product("linear_backward_input", ("dy", dy.len()), ("dx", dx.len()), rows, w.rows, w.cols)?;
        let (out, inp) = (w.rows, w.cols);
        self.install(|| match &w.data {
            CpuWeightData::BF16(d) if amx::bf16_products() => {
                amx::linear_backward_input(dy, d, dx, rows, out, inp, accumulate)
            }
            CpuWeightData::F32(d)
                if amx::bf16_products() && w.products == Products::Bf16 && rows > 0 && inp > 0 =>
            {
                amx::matmul_packed(dy, &amx::pack_linear_transposed_f32(d, out, inp), dx, rows, accumulate)
            }
            _ => matmul::linear_backward_input(dy, w.as_ref(), dx, rows, out, inp, accumulate),
        });
        Ok(())
    }

    fn linear_backward_weight(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        dw: &mut Vec<f32>,
        rows: usize,
        out: usize,
        inp: usize,
        products: Products,
        accumulate: bool,
    ) -> Result<()> {
        checks::matmul(dy.len(), x.len(), dw.len(), out, inp, rows)?;
        // Mixed precision on AMX or AVX512-BF16, where the product is big enough to pay for rounding the
        // operands (LoRA ranks, small layers stay f32).
        if products == Products::Bf16 && amx::bf16_products() && out * inp * rows >= MIXED_MIN_WORK {
            self.install(|| amx::weight_grad(dy, x, dw, rows, out, inp, accumulate));
        } else {
            self.install(|| matmul::linear_backward_weight(dy, x, dw, rows, out, inp, accumulate));
        }
        Ok(())
    }

    fn matmul(
        &self,
        a: &Vec<f32>,
        ta: bool,
        b: &Vec<f32>,
        tb: bool,
        c: &mut Vec<f32>,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        checks::matmul(a.len(), b.len(), c.len(), m, n, k)?;
        self.install(|| matmul::matmul(a, ta, b, tb, c, m, n, k, alpha, beta));
        Ok(())
    }

    fn add_assign(&self, y: &mut Vec<f32>, x: &Vec<f32>, n: usize) -> Result<()> {
        each("add_assign", n, &[("y", y.len()), ("x", x.len())])?;
        self.install(|| elementwise::add_assign(y, x, n));
        Ok(())
    }

    fn scale(&self, y: &mut Vec<f32>, n: usize, s: f32) -> Result<()> {
        need("scale", "y", y.len(), n)?;
        self.install(|| elementwise::scale(y, n, s));
        Ok(())
    }

    fn embedding(&self, ids: &[u32], table: &CpuWeight, out: &mut Vec<f32>) -> Result<()> {
        let dim = table.cols;
        checks::embedding(ids, table.rows, dim, out.len())?;
        self.install(|| embedding::embedding_forward(ids, table.as_ref(), out, dim));
        Ok(())
    }

    fn embedding_backward(
        &self,
        ids: &[u32],
        dout: &Vec<f32>,
        dtable: &mut Vec<f32>,
        dim: usize,
    ) -> Result<()> {
        checks::embedding_backward(ids, dout.len(), dtable.len(), dim)?;
        self.install(|| embedding::embedding_backward(ids, dout, dtable, dim));
        Ok(())
    }

    fn rmsnorm(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        out: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        checks::rmsnorm(x.len(), w.len(), out.len(), rstd.len(), rows, dim)?;
        self.install(|| norm::rmsnorm_forward(x, w, out, rstd, rows, dim, eps));
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        rstd: &Vec<f32>,
        dx: &mut Vec<f32>,
        dw: Option<&mut Vec<f32>>,
        rows: usize,
        dim: usize,
        accumulate: bool,
    ) -> Result<()> {
        let dw_len = dw.as_deref().map(Vec::len);
        checks::rmsnorm_backward(dout.len(), x.len(), w.len(), rstd.len(), dx.len(), dw_len, rows, dim)?;
        self.install(|| {
            norm::rmsnorm_backward(dout, x, w, rstd, dx, dw.map(|d| d.as_mut_slice()), rows, dim, accumulate)
        });
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        positions: &[u32],
        inv_freq: &[f32],
        tokens: usize,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    ) -> Result<()> {
        checks::rope(x.len(), positions.len(), inv_freq.len(), tokens, heads, head_dim)?;
        self.install(|| rope::rope(x, positions, inv_freq, tokens, heads, head_dim, inverse));
        Ok(())
    }

    fn swiglu(&self, gate: &Vec<f32>, up: &Vec<f32>, out: &mut Vec<f32>, n: usize) -> Result<()> {
        each("swiglu", n, &[("gate", gate.len()), ("up", up.len()), ("out", out.len())])?;
        self.install(|| swiglu::swiglu_forward(gate, up, out, n));
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        n: usize,
    ) -> Result<()> {
        let bufs = [("dout", dout.len()), ("gate", gate.len()), ("up", up.len())];
        each("swiglu_backward", n, &bufs)?;
        each("swiglu_backward", n, &[("dgate", dgate.len()), ("dup", dup.len())])?;
        self.install(|| swiglu::swiglu_backward(dout, gate, up, dgate, dup, n));
        Ok(())
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        dims: &AttnDims,
        doc_ids: Option<&[u32]>,
    ) -> Result<()> {
        let (q_like, kv_like) = ([("q", q.len()), ("out", out.len())], [("k", k.len()), ("v", v.len())]);
        checks::attention("attention", dims, doc_ids, &q_like, &kv_like, lse.len())?;
        self.install(|| {
            attention::attention_forward(q, k, v, out, lse, dims, doc_ids, AttnTiles::for_forward(dims))
        });
        Ok(())
    }

    fn attention_half(
        &self,
        q: &Vec<f32>,
        k: &CpuHalf,
        v: &CpuHalf,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        dims: &AttnDims,
        doc_ids: Option<&[u32]>,
    ) -> Result<()> {
        let (q_like, kv_like) = ([("q", q.len()), ("out", out.len())], [("k", k.len()), ("v", v.len())]);
        checks::attention("attention_half", dims, doc_ids, &q_like, &kv_like, lse.len())?;
        match (k, v) {
            (CpuHalf::F16(k), CpuHalf::F16(v)) => {
                use ::half::slice::HalfFloatSliceExt;
                let (k, v): (&[u16], &[u16]) = (k.reinterpret_cast(), v.reinterpret_cast());
                self.install(|| attention::attention_forward_f16(q, k, v, out, lse, dims, doc_ids));
            }
            // bf16 (or mixed) caches: widen the valid positions and run the f32 kernel.
            _ => {
                let w = dims.kv_heads * dims.head_dim;
                let n = dims.kv_len * w;
                let (mut kf, mut vf) = (self.zeros(dims.batch * n)?, self.zeros(dims.batch * n)?);
                self.install(|| {
                    for b in 0..dims.batch {
                        half_buf::widen(k, b * dims.kv_stride * w, &mut kf[b * n..(b + 1) * n]);
                        half_buf::widen(v, b * dims.kv_stride * w, &mut vf[b * n..(b + 1) * n]);
                    }
                    let dense = AttnDims { kv_stride: dims.kv_len, ..*dims };
                    attention::attention_forward(
                        q,
                        &kf,
                        &vf,
                        out,
                        lse,
                        &dense,
                        doc_ids,
                        AttnTiles::for_forward(&dense),
                    )
                });
            }
        }
        Ok(())
    }

    fn attention_backward(
        &self,
        dout: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dims: &AttnDims,
        doc_ids: Option<&[u32]>,
    ) -> Result<()> {
        let q_like = [("dout", dout.len()), ("q", q.len()), ("out", out.len()), ("dq", dq.len())];
        let kv_like = [("k", k.len()), ("v", v.len()), ("dk", dk.len()), ("dv", dv.len())];
        checks::attention("attention_backward", dims, doc_ids, &q_like, &kv_like, lse.len())?;
        self.install(|| {
            attention::attention_backward(
                dout,
                q,
                k,
                v,
                out,
                lse,
                dq,
                dk,
                dv,
                dims,
                doc_ids,
                AttnTiles::default(),
                AttnBwdMode::Auto,
            )
        });
        Ok(())
    }

    fn cross_entropy(
        &self,
        logits: &Vec<f32>,
        targets: &[i32],
        losses: &mut Vec<f32>,
        dlogits: Option<&mut Vec<f32>>,
        rows: usize,
        vocab: usize,
        grad_scale: f32,
    ) -> Result<()> {
        let dlogits_len = dlogits.as_deref().map(Vec::len);
        checks::cross_entropy(logits.len(), targets, losses.len(), dlogits_len, rows, vocab)?;
        self.install(|| {
            loss::cross_entropy(
                logits,
                targets,
                losses,
                dlogits.map(|d| d.as_mut_slice()),
                rows,
                vocab,
                grad_scale,
            )
        });
        Ok(())
    }

    fn linear_cross_entropy(
        &self,
        h: &Vec<f32>,
        w: &CpuWeight,
        targets: &[i32],
        rows: usize,
        grad_scale: f32,
        dh: Option<&mut Vec<f32>>,
        dw: Option<&mut Vec<f32>>,
    ) -> Result<(f64, usize)> {
        let (vocab, dim) = (w.rows, w.cols);
        let (dh_len, dw_len) = (dh.as_deref().map(Vec::len), dw.as_deref().map(Vec::len));
        checks::linear_cross_entropy(h.len(), targets, dh_len, dw_len, rows, dim, vocab)?;
        let (dh, dw) = (dh.map(|d| d.as_mut_slice()), dw.map(|d| d.as_mut_slice()));
        // With bf16 products (AMX or AVX512-BF16), in blocks of the vocabulary: a bf16 weight, or an f32 one with bf16 products.
        let on_amx = match &w.data {
            CpuWeightData::BF16(d) if amx::bf16_products() => Some(amx::OutputWeight::Bf16(d)),
            CpuWeightData::F32(d) if amx::bf16_products() && w.products == Products::Bf16 => {
                Some(amx::OutputWeight::F32(d))
            }
            _ => None,
        };
        Ok(self.install(|| match on_amx {
            Some(weight) => {
                amx::linear_cross_entropy(h, weight, targets, rows, vocab, dim, grad_scale, dh, dw)
            }
            None => {
                let chunk = loss::default_chunk_rows(vocab);
                loss::linear_cross_entropy(
                    h,
                    w.as_ref(),
                    targets,
                    rows,
                    vocab,
                    dim,
                    grad_scale,
                    dh,
                    dw,
                    chunk,
                )
            }
        }))
    }

    fn linear_distill(
        &self,
        hs: &Vec<f32>,
        ws: &CpuWeight,
        ht: &Vec<f32>,
        wt: &CpuWeight,
        targets: &[i32],
        rows: usize,
        spec: &DistillSpec,
        dh: Option<&mut Vec<f32>>,
        dw: Option<&mut Vec<f32>>,
    ) -> Result<DistillSums> {
        let (dh_len, dw_len) = (dh.as_deref().map(Vec::len), dw.as_deref().map(Vec::len));
        let (s, t) = ((ws.rows, ws.cols), (wt.rows, wt.cols));
        checks::linear_distill(hs.len(), ht.len(), targets, dh_len, dw_len, rows, s, t, spec)?;
        let (dh, dw) = (dh.map(|d| d.as_mut_slice()), dw.map(|d| d.as_mut_slice()));
        let chunk = distill::default_chunk_rows(ws.rows);
        Ok(self.install(|| {
            distill::linear_distill(
                hs,
                ws.as_ref(),
                ht,
                wt.as_ref(),
                targets,
                rows,
                ws.rows,
                ws.cols,
                wt.cols,
                spec,
                dh,
                dw,
                chunk,
            )
        }))
    }

    fn linear_log_probs(
        &self,
        h: &Vec<f32>,
        w: &CpuWeight,
        targets: &[i32],
        rows: usize,
    ) -> Result<Vec<f32>> {
        let (vocab, dim) = (w.rows, w.cols);
        checks::linear_cross_entropy(h.len(), targets, None, None, rows, dim, vocab)?;
        let mut logps = vec![0f32; rows];
        self.install(|| {
            let (chunk, vchunk) = (loss::default_chunk_rows(vocab), loss::LOG_PROB_VOCAB_CHUNK);
            let out = Some(logps.as_mut_slice());
            loss::linear_log_probs(
                h,
                w.as_ref(),
                targets,
                rows,
                vocab,
                dim,
                out,
                None,
                None,
                None,
                chunk,
                vchunk,
            )
        });
        Ok(logps)
    }

    fn linear_log_probs_backward(
        &self,
        h: &Vec<f32>,
        w: &CpuWeight,
        targets: &[i32],
        rows: usize,
        upstream: &[f32],
        dh: Option<&mut Vec<f32>>,
        dw: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let (vocab, dim) = (w.rows, w.cols);
        let (dh_len, dw_len) = (dh.as_deref().map(Vec::len), dw.as_deref().map(Vec::len));
        checks::linear_cross_entropy(h.len(), targets, dh_len, dw_len, rows, dim, vocab)?;
        checks::log_prob_upstream(upstream, rows)?;
        if dh.is_none() && dw.is_none() {
            return Ok(());
        }
        let (dh, dw) = (dh.map(|d| d.as_mut_slice()), dw.map(|d| d.as_mut_slice()));
        self.install(|| {
            let (chunk, vchunk) = (loss::default_chunk_rows(vocab), loss::LOG_PROB_VOCAB_CHUNK);
            let up = Some(upstream);
            loss::linear_log_probs(h, w.as_ref(), targets, rows, vocab, dim, None, up, dh, dw, chunk, vchunk)
        });
        Ok(())
    }

    fn weight_format(&self, w: &Self::Weight) -> WeightFormat {
        w.format()
    }

    fn adamw(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        n: usize,
        hp: &AdamW,
    ) -> Result<()> {
        each("adamw", n, &[("param", param.len()), ("grad", grad.len()), ("m", m.len()), ("v", v.len())])?;
        optim::adamw(&mut param[..n], &grad[..n], &mut m[..n], &mut v[..n], hp);
        Ok(())
    }

    fn adamw_weight(
        &self,
        w: &mut Self::Weight,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: &AdamW,
    ) -> Result<()> {
        let n = w.rows * w.cols;
        match &mut w.data {
            CpuWeightData::F32(p) => self.adamw(p, grad, m, v, n, hp),
            CpuWeightData::BF16(_) => Err(EngineError::Unsupported(
                "training a bf16-stored weight: load trainable weights as f32".into(),
            )),
            CpuWeightData::Quant { format, .. } => Err(EngineError::Unsupported(format!(
                "quantized weights are frozen: cannot train a {}-stored weight (load trainable \
                 weights as f32)",
                format.name()
            ))),
        }
    }

    fn sum_squares(&self, x: &Self::Buf, n: usize) -> Result<f64> {
        need("sum_squares", "x", x.len(), n)?;
        Ok(self.pool.install(|| optim::sum_squares(&x[..n])))
    }

    fn dropout(&self, x: &Self::Buf, out: &mut Self::Buf, n: usize, p: f32, seed: u64) -> Result<()> {
        checks::dropout(x.len(), out.len(), n, p)?;
        self.pool.install(|| optim::dropout(&x[..n], &mut out[..n], p, seed));
        Ok(())
    }
}

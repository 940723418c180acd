//! Causal grouped-query attention on the GPU, tiled by chunks of queries.
//!
//! Query, key and value are first copied to bf16 in head-major layouts where the `G = q_heads /
//! kv_heads` query heads that share a kv head sit next to each other: `qt[b, g, t, j, d]`,
//! `kt[b, g, s, d]`. Then, for each chunk of queries, one batched product per step over the
//! `batch · kv_heads` (sequence, kv head) pairs: the chunk's `C · G` query rows against the keys
//! they can see (`kv_c = q_offset + t0 + C` at most, the causal bound), a softmax kernel that
//! applies the causal / per-document mask and writes bf16 probabilities and the log-sum-exp, and
//! the product with the values. The backward recomputes the scores from the saved log-sum-exp
//! (FlashAttention's recipe) and accumulates `dK`, `dV` over chunks; stacking a group's heads as
//! rows makes the sum over the heads that share a kv head part of the product. Scores exist for
//! one chunk at a time (at most 64 Mi values), never as a whole `q_len × kv_len` matrix per head.

use cudarc::driver::CudaSlice;

use super::blas::{gemm, Batch, Dt, Operand};
use super::{Arg, CudaBackend, CudaBuf};
use crate::checks;
use crate::{AttnDims, Backend, Result};

/// Scores per chunk (all pairs together), at most.
const CHUNK_SCORES: usize = 64 << 20;

/// Device buffers reused between attention calls.
#[derive(Default)]
pub struct AttnScratch {
    qt: Option<CudaSlice<u16>>,
    kt: Option<CudaSlice<u16>>,
    vt: Option<CudaSlice<u16>>,
    dot: Option<CudaSlice<u16>>,
    p: Option<CudaSlice<u16>>,
    ds: Option<CudaSlice<u16>>,
    s: Option<CudaSlice<f32>>,
    dp: Option<CudaSlice<f32>>,
    ot: Option<CudaSlice<f32>>,
    dkt: Option<CudaSlice<f32>>,
    dvt: Option<CudaSlice<f32>>,
    rowdot: Option<CudaSlice<f32>>,
}

/// Shapes of one call.
struct Plan {
    b: usize,
    t: usize,
    h: usize,
    kvh: usize,
    g: usize,
    hd: usize,
    kv_len: usize,
    kv_stride: usize,
    q_offset: usize,
    scale: f32,
    /// Queries per chunk.
    chunk: usize,
}

impl Plan {
    fn new(d: &AttnDims) -> Self {
        let g = d.q_heads / d.kv_heads;
        let per_query = d.batch * d.kv_heads * g * d.kv_len.max(1);
        Plan {
            b: d.batch,
            t: d.q_len,
            h: d.q_heads,
            kvh: d.kv_heads,
            g,
            hd: d.head_dim,
            kv_len: d.kv_len,
            kv_stride: d.kv_stride,
            q_offset: d.q_offset,
            scale: d.scale,
            chunk: (CHUNK_SCORES / per_query.max(1)).clamp(1, d.q_len.max(1)),
        }
    }

    fn items(&self) -> usize {
        self.b * self.kvh
    }

    /// Elements of `q` and of `k`.
    fn sizes(&self) -> (usize, usize) {
        (self.b * self.t * self.h * self.hd, self.b * self.kv_stride * self.kvh * self.hd)
    }

    /// Elements of the head-major `kt` / `vt`.
    fn kv_t(&self) -> usize {
        self.b * self.kvh * self.kv_len * self.hd
    }

    fn scores(&self) -> usize {
        self.items() * self.chunk * self.g * self.kv_len.max(1)
    }
}

/// A strided 4-D copy (see `permute` in kernels.cu): `(a, x, y, i)` with the given strides.
#[allow(clippy::too_many_arguments)]
fn permute(
    be: &CudaBackend,
    kernel: &str,
    src: u64,
    dst: u64,
    dims: [usize; 4],
    src_strides: [usize; 3],
    dst_strides: [usize; 3],
) -> Result<()> {
    let n: usize = dims.iter().product();
    if n == 0 {
        return Ok(());
    }
    let mut args: Vec<Arg> = vec![src.into(), dst.into()];
    args.extend(dims.iter().map(|&v| Arg::I32(v as i32)));
    args.extend(src_strides.iter().chain(&dst_strides).map(|&v| Arg::I64(v as i64)));
    be.launch(kernel, be.elems(n), &args)
}

/// `[b, t, g, G·d]` (q, out, dout, dq) → `[b, g, t, G·d]`, or back with `back`.
fn permute_q(be: &CudaBackend, p: &Plan, kernel: &str, src: u64, dst: u64, back: bool) -> Result<()> {
    let gd = p.g * p.hd;
    let (rm, hm) = (p.t * p.h * p.hd, p.kvh * p.t * gd);
    if !back {
        permute(be, kernel, src, dst, [p.b, p.t, p.kvh, gd], [rm, p.h * p.hd, gd], [hm, gd, p.t * gd])
    } else {
        permute(be, kernel, src, dst, [p.b, p.kvh, p.t, gd], [hm, p.t * gd, gd], [rm, gd, p.h * p.hd])
    }
}

/// `[b, s, g, d]` (k, v, first kv_len positions of kv_stride) → `[b, g, s, d]`, or back.
fn permute_kv(be: &CudaBackend, p: &Plan, kernel: &str, src: u64, dst: u64, back: bool) -> Result<()> {
    let (rm, hm) = (p.kv_stride * p.kvh * p.hd, p.kvh * p.kv_len * p.hd);
    if !back {
        permute(
            be,
            kernel,
            src,
            dst,
            [p.b, p.kv_len, p.kvh, p.hd],
            [rm, p.kvh * p.hd, p.hd],
            [hm, p.hd, p.kv_len * p.hd],
        )
    } else {
        permute(
            be,
            kernel,
            src,
            dst,
            [p.b, p.kvh, p.kv_len, p.hd],
            [hm, p.kv_len * p.hd, p.hd],
            [rm, p.hd, p.kvh * p.hd],
        )
    }
}

/// Batched product over the (sequence, kv head) pairs; element offsets are in elements of each
/// operand's type.
#[allow(clippy::too_many_arguments)]
fn bgemm(
    be: &CudaBackend,
    a: Operand,
    ta: bool,
    b: Operand,
    tb: bool,
    c: Operand,
    m: usize,
    n: usize,
    k: usize,
    beta: f32,
    count: usize,
    stride: (usize, usize, usize),
) -> Result<()> {
    gemm(be.blas(), a, ta, b, tb, c, m, n, k, 1.0, beta, Some(Batch { count, stride }))
}

fn off(ptr: u64, elems: usize, dt: Dt) -> u64 {
    ptr + elems as u64 * if dt == Dt::BF16 { 2 } else { 4 }
}

/// The softmax kernels' shared leading arguments for one chunk.
fn chunk_args(p: &Plan, rows_c: usize, kv_c: usize, t0: usize) -> Vec<Arg> {
    vec![
        ((p.items() * rows_c * p.g) as i64).into(),
        (p.kvh as i32).into(),
        (p.g as i32).into(),
        (rows_c as i32).into(),
        (kv_c as i32).into(),
        (t0 as i32).into(),
        (p.q_offset as i32).into(),
        (p.t as i32).into(),
        (p.kv_len as i32).into(),
        p.scale.into(),
    ]
}

/// Forward (see [`crate::Backend::attention`]).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    be: &CudaBackend,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    out: &mut CudaBuf,
    lse: &mut CudaBuf,
    d: &AttnDims,
    doc_ids: Option<&[u32]>,
) -> Result<()> {
    let op = "attention";
    checks::attention(
        op,
        d,
        doc_ids,
        &[("q", q.len), ("out", out.len)],
        &[("k", k.len), ("v", v.len)],
        lse.len,
    )?;
    let p = Plan::new(d);
    if p.b * p.t * p.h == 0 || p.hd == 0 {
        return Ok(());
    }
    let (nq, _) = p.sizes();
    let mut sc = be.lock();
    let a = &mut sc.attn;
    let qt = be.ptr(be.grow(&mut a.qt, nq)?);
    let kt = be.ptr(be.grow(&mut a.kt, p.kv_t())?);
    let vt = be.ptr(be.grow(&mut a.vt, p.kv_t())?);
    let ot = be.ptr(be.grow(&mut a.ot, nq)?);
    let s = be.ptr(be.grow(&mut a.s, p.scores())?);
    let pp = be.ptr(be.grow(&mut a.p, p.scores())?);
    permute_q(be, &p, "permute_f32_bf16", be.bptr(q), qt, false)?;
    permute_kv(be, &p, "permute_f32_bf16", be.bptr(k), kt, false)?;
    permute_kv(be, &p, "permute_f32_bf16", be.bptr(v), vt, false)?;
    let doc = doc_ids.map(|ids| be.upload(&ids[..p.b * p.kv_len])).transpose()?;
    let doc_ptr = doc.as_ref().map_or(0, |x| be.ptr(x));
    let (gd, hd) = (p.g * p.hd, p.hd);
    let mut t0 = 0;
    while t0 < p.t {
        let rc = p.chunk.min(p.t - t0);
        let kv_c = p.kv_len.min(p.q_offset + t0 + rc);
        let rows = rc * p.g;
        let bf = |ptr, ld| Operand { ptr, dt: Dt::BF16, ld };
        let f = |ptr, ld| Operand { ptr, dt: Dt::F32, ld };
        // S = Q_c · Kᵀ
        bgemm(
            be,
            bf(off(qt, t0 * gd, Dt::BF16), hd),
            false,
            bf(kt, hd),
            true,
            f(s, kv_c),
            rows,
            kv_c,
            hd,
            0.0,
            p.items(),
            (p.t * gd, p.kv_len * hd, rows * kv_c),
        )?;
        let mut args: Vec<Arg> = vec![s.into(), pp.into(), be.bptr(lse).into(), doc_ptr.into()];
        args.extend(chunk_args(&p, rc, kv_c, t0));
        be.launch("attn_softmax_fwd", CudaBackend::warps_cfg(p.items() * rows), &args)?;
        // O_c = P · V
        bgemm(
            be,
            bf(pp, kv_c),
            false,
            bf(vt, hd),
            false,
            f(off(ot, t0 * gd, Dt::F32), hd),
            rows,
            hd,
            kv_c,
            0.0,
            p.items(),
            (rows * kv_c, p.kv_len * hd, p.t * gd),
        )?;
        t0 += rc;
    }
    permute_q(be, &p, "permute_f32_f32", ot, be.bptr(out), true)?;
    drop(doc);
    Ok(())
}

/// Backward (see [`crate::Backend::attention_backward`]).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    be: &CudaBackend,
    dout: &CudaBuf,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    out: &CudaBuf,
    lse: &CudaBuf,
    dq: &mut CudaBuf,
    dk: &mut CudaBuf,
    dv: &mut CudaBuf,
    d: &AttnDims,
    doc_ids: Option<&[u32]>,
) -> Result<()> {
    let op = "attention_backward";
    let q_like = [("dout", dout.len), ("q", q.len), ("out", out.len), ("dq", dq.len)];
    let kv_like = [("k", k.len), ("v", v.len), ("dk", dk.len), ("dv", dv.len)];
    checks::attention(op, d, doc_ids, &q_like, &kv_like, lse.len)?;
    let p = Plan::new(d);
    let (nq, nk) = p.sizes();
    if p.kv_stride > p.kv_len || p.t == 0 {
        be.fill(dk, nk, 0.0)?;
        be.fill(dv, nk, 0.0)?;
    }
    if p.b * p.t * p.h == 0 || p.hd == 0 {
        return Ok(());
    }
    let mut sc = be.lock();
    let a = &mut sc.attn;
    let qt = be.ptr(be.grow(&mut a.qt, nq)?);
    let kt = be.ptr(be.grow(&mut a.kt, p.kv_t())?);
    let vt = be.ptr(be.grow(&mut a.vt, p.kv_t())?);
    let dot = be.ptr(be.grow(&mut a.dot, nq)?);
    let dqt = be.ptr(be.grow(&mut a.ot, nq)?);
    let dkt = be.ptr(be.grow(&mut a.dkt, p.kv_t())?);
    let dvt = be.ptr(be.grow(&mut a.dvt, p.kv_t())?);
    let s = be.ptr(be.grow(&mut a.s, p.scores())?);
    let dp = be.ptr(be.grow(&mut a.dp, p.scores())?);
    let pp = be.ptr(be.grow(&mut a.p, p.scores())?);
    let ds = be.ptr(be.grow(&mut a.ds, p.scores())?);
    let rowdot = be.ptr(be.grow(&mut a.rowdot, p.b * p.h * p.t)?);
    permute_q(be, &p, "permute_f32_bf16", be.bptr(q), qt, false)?;
    permute_q(be, &p, "permute_f32_bf16", be.bptr(dout), dot, false)?;
    permute_kv(be, &p, "permute_f32_bf16", be.bptr(k), kt, false)?;
    permute_kv(be, &p, "permute_f32_bf16", be.bptr(v), vt, false)?;
    be.launch(
        "attn_rowdot",
        CudaBackend::warps_cfg(p.b * p.t * p.h),
        &[
            be.bptr(dout).into(),
            be.bptr(out).into(),
            rowdot.into(),
            (p.b as i32).into(),
            (p.t as i32).into(),
            (p.h as i32).into(),
            (p.hd as i32).into(),
        ],
    )?;
    let zero = |ptr: u64| {
        be.launch("fill_f32", be.elems(p.kv_t()), &[ptr.into(), (p.kv_t() as i64).into(), 0f32.into()])
    };
    zero(dkt)?;
    zero(dvt)?;
    let doc = doc_ids.map(|ids| be.upload(&ids[..p.b * p.kv_len])).transpose()?;
    let doc_ptr = doc.as_ref().map_or(0, |x| be.ptr(x));
    let (gd, hd) = (p.g * p.hd, p.hd);
    let bf = |ptr, ld| Operand { ptr, dt: Dt::BF16, ld };
    let f = |ptr, ld| Operand { ptr, dt: Dt::F32, ld };
    let mut t0 = 0;
    while t0 < p.t {
        let rc = p.chunk.min(p.t - t0);
        let kv_c = p.kv_len.min(p.q_offset + t0 + rc);
        let rows = rc * p.g;
        let n = p.items();
        let q_c = off(qt, t0 * gd, Dt::BF16);
        let do_c = off(dot, t0 * gd, Dt::BF16);
        let sq = (p.t * gd, p.kv_len * hd, rows * kv_c);
        // S = Q_c · Kᵀ and dP = dO_c · Vᵀ
        bgemm(be, bf(q_c, hd), false, bf(kt, hd), true, f(s, kv_c), rows, kv_c, hd, 0.0, n, sq)?;
        bgemm(be, bf(do_c, hd), false, bf(vt, hd), true, f(dp, kv_c), rows, kv_c, hd, 0.0, n, sq)?;
        let mut args: Vec<Arg> = vec![
            s.into(),
            dp.into(),
            be.bptr(lse).into(),
            rowdot.into(),
            pp.into(),
            ds.into(),
            doc_ptr.into(),
        ];
        args.extend(chunk_args(&p, rc, kv_c, t0));
        be.launch("attn_softmax_bwd", CudaBackend::warps_cfg(n * rows), &args)?;
        // dQ_c = dS · K
        bgemm(
            be,
            bf(ds, kv_c),
            false,
            bf(kt, hd),
            false,
            f(off(dqt, t0 * gd, Dt::F32), hd),
            rows,
            hd,
            kv_c,
            0.0,
            n,
            (rows * kv_c, p.kv_len * hd, p.t * gd),
        )?;
        // dK += dSᵀ · Q_c and dV += Pᵀ · dO_c (the group's heads summed by the product)
        let st = (rows * kv_c, p.t * gd, p.kv_len * hd);
        bgemm(be, bf(ds, kv_c), true, bf(q_c, hd), false, f(dkt, hd), kv_c, hd, rows, 1.0, n, st)?;
        bgemm(be, bf(pp, kv_c), true, bf(do_c, hd), false, f(dvt, hd), kv_c, hd, rows, 1.0, n, st)?;
        t0 += rc;
    }
    permute_q(be, &p, "permute_f32_f32", dqt, be.bptr(dq), true)?;
    permute_kv(be, &p, "permute_f32_f32", dkt, be.bptr(dk), true)?;
    permute_kv(be, &p, "permute_f32_f32", dvt, be.bptr(dv), true)?;
    drop(doc);
    Ok(())
}

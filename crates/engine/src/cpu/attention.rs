//! Causal grouped-query attention, flash style: queries are processed in blocks of `bq` rows
//! against key tiles of `bk` keys with an online softmax, so no score matrix larger than one
//! `bq × bk` tile ever exists. The backward recomputes the probabilities from the saved
//! log-sum-exp.
//!
//! Layouts (see [`AttnDims`]): `q`, `out`: `[batch, q_len, q_heads, head_dim]`; `k`, `v`:
//! `[batch, kv_stride, kv_heads, head_dim]`; `lse`: `[batch, q_heads, q_len]`; `doc_ids`:
//! `[batch, kv_len]`.

use super::float::{dot, Real, SendPtr};
use super::small_gemm::small_gemm;
use super::vector;
use crate::AttnDims;
use rayon::prelude::*;

/// Tile sizes of the attention kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnTiles {
    /// Query rows per block.
    pub bq: usize,
    /// Keys per tile.
    pub bk: usize,
}

impl Default for AttnTiles {
    fn default() -> Self {
        AttnTiles { bq: 64, bk: 64 }
    }
}

impl AttnTiles {
    /// Tiles for the forward of `dims`: square 64 × 64 tiles, except for a few queries against a
    /// cache (decoding), where a query block of their size and 512 keys per tile cut the number
    /// of small products per token eightfold.
    pub fn for_forward(dims: &AttnDims) -> Self {
        if dims.q_len <= 8 {
            AttnTiles { bq: dims.q_len.max(1), bk: 512 }
        } else {
            AttnTiles::default()
        }
    }
}

/// How the backward splits its work between threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnBwdMode {
    /// [`AttnBwdMode::SinglePass`] when there are enough `(batch, kv_head)` pairs to keep every
    /// thread busy, else [`AttnBwdMode::TwoPass`].
    Auto,
    /// One task per `(batch, kv_head)` computes `dq`, `dk` and `dv` together (5 tile products).
    SinglePass,
    /// Tasks per key tile compute `dk`, `dv`; then tasks per query block compute `dq`
    /// (7 tile products, but many more tasks).
    TwoPass,
}

/// Number of elements `q` (and `out`) must hold.
pub fn q_elems(d: &AttnDims) -> usize {
    d.batch * d.q_len * d.q_heads * d.head_dim
}

/// Number of elements `k` and `v` must hold.
pub fn kv_elems(d: &AttnDims) -> usize {
    d.batch * d.kv_stride * d.kv_heads * d.head_dim
}

/// Number of elements `lse` must hold.
pub fn lse_elems(d: &AttnDims) -> usize {
    d.batch * d.q_heads * d.q_len
}

/// Shared read-only state of one attention call.
struct Ctx<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    doc: Option<&'a [u32]>,
    d: &'a AttnDims,
    scale: T,
    /// Row strides of q and of k/v.
    qs: usize,
    ks: usize,
    /// Query heads per kv head.
    grp: usize,
    tiles: AttnTiles,
    /// Keys and values transposed per `(batch, kv_head)`, `[batch, kv_heads, head_dim, kv_len]`,
    /// when there are enough queries per call to pay for it (see [`Ctx::transpose_kv`]).
    kt: Vec<T>,
    vt: Vec<T>,
}

/// Queries per call from which keys (and values, in the backward) are transposed once per call,
/// so that the score products read them along rows (the fast case of [`small_gemm`]).
const TRANSPOSE_MIN_Q: usize = 16;

/// Per-thread scratch tiles.
struct Scratch<T> {
    s: Vec<T>,
    dp: Vec<T>,
    mask: Vec<bool>,
    acc: Vec<T>,
    acc2: Vec<T>,
    m: Vec<T>,
    l: Vec<T>,
}

impl<T: Real> Scratch<T> {
    /// Tiles for the backward: every buffer.
    fn new(t: AttnTiles, hd: usize) -> Self {
        let rows = t.bq.max(t.bk);
        Scratch {
            s: vec![T::ZERO; t.bq * t.bk],
            dp: vec![T::ZERO; t.bq * t.bk],
            mask: vec![false; t.bq * t.bk],
            acc: vec![T::ZERO; rows * hd],
            acc2: vec![T::ZERO; rows * hd],
            m: vec![T::ZERO; t.bq],
            l: vec![T::ZERO; t.bq],
        }
    }

    /// Tiles for the forward, which needs no gradient tiles and an accumulator of `bq` rows
    /// only (a decoding step's tasks would otherwise clear 256 KiB each).
    fn forward(t: AttnTiles, hd: usize) -> Self {
        Scratch {
            s: vec![T::ZERO; t.bq * t.bk],
            dp: Vec::new(),
            mask: vec![false; t.bq * t.bk],
            acc: vec![T::ZERO; t.bq * hd],
            acc2: Vec::new(),
            m: vec![T::ZERO; t.bq],
            l: vec![T::ZERO; t.bq],
        }
    }
}

impl<'a, T: Real> Ctx<'a, T> {
    fn new(
        q: &'a [T],
        k: &'a [T],
        v: &'a [T],
        d: &'a AttnDims,
        doc: Option<&'a [u32]>,
        tiles: AttnTiles,
    ) -> Self {
        assert!(tiles.bq > 0 && tiles.bk > 0);
        assert!(d.kv_heads > 0 && d.q_heads.is_multiple_of(d.kv_heads));
        assert!(d.kv_len <= d.kv_stride);
        assert!(q.len() >= q_elems(d) && k.len() >= kv_elems(d) && v.len() >= kv_elems(d));
        if let Some(doc) = doc {
            assert!(doc.len() >= d.batch * d.kv_len && d.q_offset + d.q_len <= d.kv_len);
        }
        Ctx {
            q,
            k,
            v,
            doc,
            d,
            scale: T::from_f32(d.scale),
            qs: d.q_heads * d.head_dim,
            ks: d.kv_heads * d.head_dim,
            grp: d.q_heads / d.kv_heads,
            tiles,
            kt: Vec::new(),
            vt: Vec::new(),
        }
    }

    /// Fills [`Ctx::kt`] (and [`Ctx::vt`] with `values`) when the call has at least
    /// [`TRANSPOSE_MIN_Q`] queries; decoding (a few queries against a long cache) keeps reading
    /// the cache as it is.
    fn transpose_kv(mut self, values: bool) -> Self {
        let d = self.d;
        if d.q_len < TRANSPOSE_MIN_Q || d.kv_len == 0 {
            return self;
        }
        let (hd, n) = (d.head_dim, d.kv_len);
        let transpose = |src: &[T]| {
            let mut t = vec![T::ZERO; d.batch * d.kv_heads * hd * n];
            t.par_chunks_mut(hd * n).enumerate().for_each(|(p, dst)| {
                let (b, g) = (p / d.kv_heads, p % d.kv_heads);
                for s in 0..n {
                    let row = &src[self.kv_off(b, s, g)..self.kv_off(b, s, g) + hd];
                    for (c, &x) in row.iter().enumerate() {
                        dst[c * n + s] = x;
                    }
                }
            });
            t
        };
        let kt = transpose(self.k);
        let vt = if values { transpose(self.v) } else { Vec::new() };
        (self.kt, self.vt) = (kt, vt);
        self
    }

    #[inline]
    fn q_off(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.d.q_len + t) * self.d.q_heads + h) * self.d.head_dim
    }

    #[inline]
    fn kv_off(&self, b: usize, s: usize, g: usize) -> usize {
        ((b * self.d.kv_stride + s) * self.d.kv_heads + g) * self.d.head_dim
    }

    #[inline]
    fn lse_off(&self, b: usize, h: usize, t: usize) -> usize {
        (b * self.d.q_heads + h) * self.d.q_len + t
    }

    /// Whether the whole tile (queries `t0..t0+nq`, keys `s0..s0+nk`) is visible without a mask.
    #[inline]
    fn tile_full(&self, t0: usize, s0: usize, nk: usize) -> bool {
        self.doc.is_none() && s0 + nk <= self.d.q_offset + t0 + 1
    }

    /// Fills `mask[i * bk + j]` with whether query `t0 + i` sees key `s0 + j`; returns whether any
    /// does.
    fn fill_mask(&self, mask: &mut [bool], b: usize, t0: usize, nq: usize, s0: usize, nk: usize) -> bool {
        let bk = self.tiles.bk;
        let mut any = false;
        for i in 0..nq {
            let ta = self.d.q_offset + t0 + i;
            let row = &mut mask[i * bk..i * bk + nk];
            match self.doc {
                None => {
                    for (j, m) in row.iter_mut().enumerate() {
                        *m = s0 + j <= ta;
                        any |= *m;
                    }
                }
                Some(doc) => {
                    let docs = &doc[b * self.d.kv_len..(b + 1) * self.d.kv_len];
                    let qd = docs[ta];
                    for (j, m) in row.iter_mut().enumerate() {
                        *m = s0 + j <= ta && docs[s0 + j] == qd;
                        any |= *m;
                    }
                }
            }
        }
        any
    }

    /// `dst[nq, nk] = alpha · A · Bᵀ` (row stride `dst_rs`) for `A`: `nq` rows of `head_dim` at
    /// row stride `a_rs`, and `B`: keys `s0..s0 + nk` of kv head `g` of sequence `b`, from `t`
    /// (keys or values transposed by [`Ctx::transpose_kv`]) when present, else from `src` (the
    /// keys or values as they are).
    ///
    /// # Safety
    /// The addressed rows must be in bounds; `dst` must hold `nq` rows of `nk` at `dst_rs`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product_bt(
        &self,
        t: &[T],
        src: &[T],
        (b, g, s0): (usize, usize, usize),
        nq: usize,
        nk: usize,
        dst: *mut T,
        dst_rs: usize,
        a: *const T,
        a_rs: usize,
        alpha: T,
    ) {
        let hd = self.d.head_dim;
        // SAFETY: forwarded contract; the transposed copy has `kv_len` columns per row.
        unsafe {
            if t.is_empty() {
                let bp = src.as_ptr().add(self.kv_off(b, s0, g));
                small_gemm(nq, nk, hd, dst, dst_rs, a, a_rs, 1, bp, 1, self.ks, alpha, T::ZERO);
            } else {
                let n = self.d.kv_len;
                let bp = t.as_ptr().add((b * self.d.kv_heads + g) * hd * n + s0);
                small_gemm(nq, nk, hd, dst, dst_rs, a, a_rs, 1, bp, n, 1, alpha, T::ZERO);
            }
        }
    }

    /// `s[i * bk + j] = scale · q[t0 + i] · k[s0 + j]` for head `h` (kv head `h / grp`), masked
    /// entries set to −∞. Returns false (and computes nothing) when the tile is fully masked.
    #[allow(clippy::too_many_arguments)]
    fn scores(
        &self,
        sc: &mut Scratch<T>,
        b: usize,
        h: usize,
        t0: usize,
        nq: usize,
        s0: usize,
        nk: usize,
    ) -> bool {
        let full = self.tile_full(t0, s0, nk);
        if !full && !self.fill_mask(&mut sc.mask, b, t0, nq, s0, nk) {
            return false;
        }
        let bk = self.tiles.bk;
        let g = h / self.grp;
        // SAFETY: rows t0..t0+nq of head h and keys s0..s0+nk of kv head g are in bounds (the
        // sizes were checked in `Ctx::new`); the tile holds bq × bk ≥ nq × nk elements.
        unsafe {
            let qp = self.q.as_ptr().add(self.q_off(b, t0, h));
            self.product_bt(
                &self.kt,
                self.k,
                (b, g, s0),
                nq,
                nk,
                sc.s.as_mut_ptr(),
                bk,
                qp,
                self.qs,
                self.scale,
            );
        }
        if !full {
            for i in 0..nq {
                let (srow, mrow) = (&mut sc.s[i * bk..i * bk + nk], &sc.mask[i * bk..i * bk + nk]);
                for (x, &m) in srow.iter_mut().zip(mrow) {
                    if !m {
                        *x = T::NEG_INFINITY;
                    }
                }
            }
        }
        true
    }
}

/// Forward attention: writes `out` and `lse` (see the module doc for layouts). A query that sees
/// no key gets a zero output and `lse = −∞`.
///
/// # Panics
/// When a slice is too short or the dims are inconsistent.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &mut [T],
    lse: &mut [T],
    dims: &AttnDims,
    doc_ids: Option<&[u32]>,
    tiles: AttnTiles,
) {
    let cx = Ctx::new(q, k, v, dims, doc_ids, tiles).transpose_kv(false);
    assert!(out.len() >= q_elems(dims) && lse.len() >= lse_elems(dims));
    let d = dims;
    let hd = d.head_dim;
    let nqb = d.q_len.div_ceil(tiles.bq);
    let (out_p, lse_p) = (SendPtr(out.as_mut_ptr()), SendPtr(lse.as_mut_ptr()));
    (0..d.batch * d.q_heads * nqb).into_par_iter().for_each_init(
        || Scratch::<T>::forward(tiles, hd),
        |sc, task| {
            let (b, h, qb) = (task / (d.q_heads * nqb), (task / nqb) % d.q_heads, task % nqb);
            let g = h / cx.grp;
            let t0 = qb * tiles.bq;
            let nq = tiles.bq.min(d.q_len - t0);
            let s_hi = d.kv_len.min(d.q_offset + t0 + nq);
            let bk = tiles.bk;
            sc.acc[..nq * hd].fill(T::ZERO);
            sc.m[..nq].fill(T::NEG_INFINITY);
            sc.l[..nq].fill(T::ZERO);
            let mut s0 = 0;
            while s0 < s_hi {
                let nk = bk.min(s_hi - s0);
                if cx.scores(sc, b, h, t0, nq, s0, nk) {
                    for i in 0..nq {
                        let row = &mut sc.s[i * bk..i * bk + nk];
                        let mi = sc.m[i];
                        let mn = mi.max(vector::max(row));
                        if mn == T::NEG_INFINITY {
                            row.fill(T::ZERO);
                            continue;
                        }
                        let corr = if mi == T::NEG_INFINITY { T::ZERO } else { (mi - mn).exp() };
                        let ps = vector::exp_sub_sum(row, mn);
                        sc.l[i] = sc.l[i] * corr + ps;
                        sc.m[i] = mn;
                        if corr != T::ONE {
                            vector::scale(&mut sc.acc[i * hd..(i + 1) * hd], corr);
                        }
                    }
                    // SAFETY: keys s0..s0+nk of kv head g are in bounds; acc holds nq × hd.
                    unsafe {
                        small_gemm(
                            nq,
                            hd,
                            nk,
                            sc.acc.as_mut_ptr(),
                            hd,
                            sc.s.as_ptr(),
                            bk,
                            1,
                            v.as_ptr().add(cx.kv_off(b, s0, g)),
                            cx.ks,
                            1,
                            T::ONE,
                            T::ONE,
                        );
                    }
                }
                s0 += nk;
            }
            for i in 0..nq {
                let l = sc.l[i];
                // SAFETY: each (b, h, t) output row and lse entry belongs to this task only.
                let o = unsafe { out_p.slice(cx.q_off(b, t0 + i, h), hd) };
                let le = unsafe { lse_p.slice(cx.lse_off(b, h, t0 + i), 1) };
                if l > T::ZERO {
                    let inv = T::ONE / l;
                    for (o, &a) in o.iter_mut().zip(&sc.acc[i * hd..(i + 1) * hd]) {
                        *o = a * inv;
                    }
                    le[0] = sc.m[i] + l.ln();
                } else {
                    o.fill(T::ZERO);
                    le[0] = T::NEG_INFINITY;
                }
            }
        },
    );
}

/// State of the backward on top of [`Ctx`].
struct BwdCtx<'a, T> {
    cx: Ctx<'a, T>,
    dout: &'a [T],
    lse: &'a [T],
    /// `rowsum(dout ∘ out)` per query, laid out like `lse`.
    delta: Vec<T>,
}

impl<T: Real> BwdCtx<'_, T> {
    /// Computes `P` (into `sc.s`) and `dS = P ∘ (dP − delta)` (into `sc.dp`) for one tile;
    /// false when the tile is fully masked.
    #[allow(clippy::too_many_arguments)]
    fn tile_grads(
        &self,
        sc: &mut Scratch<T>,
        b: usize,
        h: usize,
        t0: usize,
        nq: usize,
        s0: usize,
        nk: usize,
    ) -> bool {
        let cx = &self.cx;
        if !cx.scores(sc, b, h, t0, nq, s0, nk) {
            return false;
        }
        let bk = cx.tiles.bk;
        let g = h / cx.grp;
        // dP = dO · Vᵀ
        // SAFETY: rows t0..t0+nq of head h, keys s0..s0+nk of kv head g are in bounds.
        unsafe {
            let dop = self.dout.as_ptr().add(cx.q_off(b, t0, h));
            cx.product_bt(&cx.vt, cx.v, (b, g, s0), nq, nk, sc.dp.as_mut_ptr(), bk, dop, cx.qs, T::ONE);
        }
        for i in 0..nq {
            let li = self.lse[cx.lse_off(b, h, t0 + i)];
            let di = self.delta[cx.lse_off(b, h, t0 + i)];
            let (p, dp) = (&mut sc.s[i * bk..i * bk + nk], &mut sc.dp[i * bk..i * bk + nk]);
            if li == T::NEG_INFINITY {
                p.fill(T::ZERO);
                dp.fill(T::ZERO);
                continue;
            }
            vector::softmax_grad_row(p, dp, li, di);
        }
        true
    }

    /// `dk`, `dv` of keys `s0..s0+nk` of kv head `g` (written, overwriting), summed over the
    /// query heads of the group; with `dq_p`, also adds this tile's part of `dq` (the caller
    /// must own those `dq` rows).
    #[allow(clippy::too_many_arguments)]
    fn dkdv_tile(
        &self,
        sc: &mut Scratch<T>,
        b: usize,
        g: usize,
        s0: usize,
        nk: usize,
        dk_p: SendPtr<T>,
        dv_p: SendPtr<T>,
        dq_p: Option<SendPtr<T>>,
    ) {
        let cx = &self.cx;
        let d = cx.d;
        let hd = d.head_dim;
        let (bq, bk) = (cx.tiles.bq, cx.tiles.bk);
        sc.acc[..nk * hd].fill(T::ZERO);
        sc.acc2[..nk * hd].fill(T::ZERO);
        let t_start = s0.saturating_sub(d.q_offset);
        for h in g * cx.grp..(g + 1) * cx.grp {
            let mut t0 = t_start;
            while t0 < d.q_len {
                let nq = bq.min(d.q_len - t0);
                if self.tile_grads(sc, b, h, t0, nq, s0, nk) {
                    let qo = cx.q_off(b, t0, h);
                    // SAFETY: all addressed rows are in bounds (checked in Ctx::new); acc and
                    // acc2 hold bk × hd ≥ nk × hd; the dq rows of head h belong to the caller.
                    unsafe {
                        // dV += Pᵀ · dO
                        small_gemm(
                            nk,
                            hd,
                            nq,
                            sc.acc2.as_mut_ptr(),
                            hd,
                            sc.s.as_ptr(),
                            1,
                            bk,
                            self.dout.as_ptr().add(qo),
                            cx.qs,
                            1,
                            T::ONE,
                            T::ONE,
                        );
                        // dK += scale · dSᵀ · Q
                        small_gemm(
                            nk,
                            hd,
                            nq,
                            sc.acc.as_mut_ptr(),
                            hd,
                            sc.dp.as_ptr(),
                            1,
                            bk,
                            cx.q.as_ptr().add(qo),
                            cx.qs,
                            1,
                            cx.scale,
                            T::ONE,
                        );
                        // dQ += scale · dS · K
                        if let Some(dq_p) = dq_p {
                            small_gemm(
                                nq,
                                hd,
                                nk,
                                dq_p.0.add(qo),
                                cx.qs,
                                sc.dp.as_ptr(),
                                bk,
                                1,
                                cx.k.as_ptr().add(cx.kv_off(b, s0, g)),
                                cx.ks,
                                1,
                                cx.scale,
                                T::ONE,
                            );
                        }
                    }
                }
                t0 += nq;
            }
        }
        for j in 0..nk {
            let off = cx.kv_off(b, s0 + j, g);
            // SAFETY: key rows s0..s0+nk of kv head g belong to this task only.
            unsafe {
                dk_p.slice(off, hd).copy_from_slice(&sc.acc[j * hd..(j + 1) * hd]);
                dv_p.slice(off, hd).copy_from_slice(&sc.acc2[j * hd..(j + 1) * hd]);
            }
        }
    }

    /// `dq` of queries `t0..t0+nq` of head `h` (written, overwriting).
    fn dq_block(&self, sc: &mut Scratch<T>, b: usize, h: usize, t0: usize, nq: usize, dq_p: SendPtr<T>) {
        let cx = &self.cx;
        let d = cx.d;
        let hd = d.head_dim;
        let bk = cx.tiles.bk;
        let g = h / cx.grp;
        sc.acc[..nq * hd].fill(T::ZERO);
        let s_hi = d.kv_len.min(d.q_offset + t0 + nq);
        let mut s0 = 0;
        while s0 < s_hi {
            let nk = bk.min(s_hi - s0);
            if self.tile_grads(sc, b, h, t0, nq, s0, nk) {
                // SAFETY: keys s0..s0+nk of kv head g are in bounds; acc holds ≥ nq × hd.
                unsafe {
                    small_gemm(
                        nq,
                        hd,
                        nk,
                        sc.acc.as_mut_ptr(),
                        hd,
                        sc.dp.as_ptr(),
                        bk,
                        1,
                        cx.k.as_ptr().add(cx.kv_off(b, s0, g)),
                        cx.ks,
                        1,
                        cx.scale,
                        T::ONE,
                    );
                }
            }
            s0 += nk;
        }
        for i in 0..nq {
            // SAFETY: the dq rows of (b, h, t0..t0+nq) belong to this task only.
            unsafe {
                dq_p.slice(cx.q_off(b, t0 + i, h), hd).copy_from_slice(&sc.acc[i * hd..(i + 1) * hd]);
            }
        }
    }
}

/// Backward of [`attention_forward`]: overwrites `dq`, `dk`, `dv` (key positions at and beyond
/// `kv_len` get zeros).
///
/// # Panics
/// When a slice is too short or the dims are inconsistent.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dims: &AttnDims,
    doc_ids: Option<&[u32]>,
    tiles: AttnTiles,
    mode: AttnBwdMode,
) {
    let cx = Ctx::new(q, k, v, dims, doc_ids, tiles).transpose_kv(true);
    let d = dims;
    let (nq_el, nkv_el) = (q_elems(d), kv_elems(d));
    assert!(dout.len() >= nq_el && out.len() >= nq_el && lse.len() >= lse_elems(d));
    assert!(dq.len() >= nq_el && dk.len() >= nkv_el && dv.len() >= nkv_el);
    let hd = d.head_dim;
    let mut delta = vec![T::ZERO; lse_elems(d)];
    if d.q_len > 0 {
        delta.par_chunks_mut(d.q_len).enumerate().for_each(|(bh, dl)| {
            let (b, h) = (bh / d.q_heads, bh % d.q_heads);
            for (t, x) in dl.iter_mut().enumerate() {
                let o = cx.q_off(b, t, h);
                *x = dot(&dout[o..o + hd], &out[o..o + hd]);
            }
        });
    }
    let bx = BwdCtx { cx, dout, lse, delta };
    dk[..nkv_el].par_chunks_mut(4096).for_each(|c| c.fill(T::ZERO));
    dv[..nkv_el].par_chunks_mut(4096).for_each(|c| c.fill(T::ZERO));
    let (dq_p, dk_p, dv_p) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    let pairs = d.batch * d.kv_heads;
    let threads = rayon::current_num_threads();
    let single = match mode {
        AttnBwdMode::SinglePass => true,
        AttnBwdMode::TwoPass => false,
        AttnBwdMode::Auto => pairs.is_multiple_of(threads) || pairs >= 4 * threads,
    };
    let nkb = d.kv_len.div_ceil(tiles.bk);
    if single {
        dq[..nq_el].par_chunks_mut(4096).for_each(|c| c.fill(T::ZERO));
        (0..pairs).into_par_iter().for_each_init(
            || Scratch::<T>::new(tiles, hd),
            |sc, p| {
                let (b, g) = (p / d.kv_heads, p % d.kv_heads);
                for kb in 0..nkb {
                    let s0 = kb * tiles.bk;
                    let nk = tiles.bk.min(d.kv_len - s0);
                    bx.dkdv_tile(sc, b, g, s0, nk, dk_p, dv_p, Some(dq_p));
                }
            },
        );
    } else {
        (0..pairs * nkb).into_par_iter().for_each_init(
            || Scratch::<T>::new(tiles, hd),
            |sc, task| {
                let (p, kb) = (task / nkb, task % nkb);
                let (b, g) = (p / d.kv_heads, p % d.kv_heads);
                let s0 = kb * tiles.bk;
                let nk = tiles.bk.min(d.kv_len - s0);
                bx.dkdv_tile(sc, b, g, s0, nk, dk_p, dv_p, None);
            },
        );
        let nqb = d.q_len.div_ceil(tiles.bq);
        (0..d.batch * d.q_heads * nqb).into_par_iter().for_each_init(
            || Scratch::<T>::new(tiles, hd),
            |sc, task| {
                let (b, h, qb) = (task / (d.q_heads * nqb), (task / nqb) % d.q_heads, task % nqb);
                let t0 = qb * tiles.bq;
                let nq = tiles.bq.min(d.q_len - t0);
                bx.dq_block(sc, b, h, t0, nq, dq_p);
            },
        );
    }
}

// ---- forward against an f16 KV cache ------------------------------------------------------------

/// Most queries per call that [`attention_forward_f16`] computes directly from the f16 keys and
/// values (decoding); longer calls (prompt passes) widen the keys and values they read to f32
/// once and run [`attention_forward`].
pub const F16_DIRECT_MAX_Q: usize = 8;

/// Keys per task of the direct f16 kernel: each `(sequence, kv head)` is split into runs of this
/// many keys whose partial softmax results are merged afterwards, so that a single sequence
/// still gives the pool several tasks (SmolLM2's 3 kv heads alone would leave one of 2 threads
/// idle a third of the time). Fixed (not derived from the thread count), so the result does not
/// depend on the number of threads.
const F16_KEYS_PER_TASK: usize = 64;

/// Forward attention of f32 queries against keys and values stored as IEEE binary16 bit patterns
/// (a KV cache in f16), in the layouts of [`attention_forward`]: writes `out` and `lse`.
///
/// Up to [`F16_DIRECT_MAX_Q`] queries without `doc_ids` (decoding) run a kernel that reads the
/// f16 rows directly, converting them in registers (AVX-512 where the CPU has it, else a portable
/// loop) and reading each key and value row once for all the query heads of its group
/// (grouped-query attention); other calls widen the keys and values to f32 first.
///
/// # Panics
/// When a slice is too short or the dims are inconsistent.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_f16(
    q: &[f32],
    k: &[u16],
    v: &[u16],
    out: &mut [f32],
    lse: &mut [f32],
    dims: &AttnDims,
    doc_ids: Option<&[u32]>,
) {
    attention_forward_f16_with(q, k, v, out, lse, dims, doc_ids, f16_simd_available());
}

/// [`attention_forward_f16`] without SIMD intrinsics (what runs on CPUs without AVX-512); public
/// so that the tests can check it on any machine.
///
/// # Panics
/// When a slice is too short or the dims are inconsistent.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_f16_portable(
    q: &[f32],
    k: &[u16],
    v: &[u16],
    out: &mut [f32],
    lse: &mut [f32],
    dims: &AttnDims,
    doc_ids: Option<&[u32]>,
) {
    attention_forward_f16_with(q, k, v, out, lse, dims, doc_ids, false);
}

/// Whether the AVX-512 f16 kernels can run here (AVX-512F includes the 16-wide f16 → f32
/// conversion; F16C comes with the AVX2 level), within the cap of [`super::features`].
pub fn f16_simd_available() -> bool {
    cfg!(target_arch = "x86_64") && super::features::allows(super::features::CpuLevel::Avx512)
}

/// Widens f16 bit patterns to f32 (`dst.len()` values), with AVX-512 when `simd`.
pub fn f16_to_f32_slice(src: &[u16], dst: &mut [f32], simd: bool) {
    assert!(src.len() >= dst.len());
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true after `f16_simd_available()`; the lengths were checked.
        unsafe { f16x::widen(src.as_ptr(), dst.as_mut_ptr(), dst.len()) };
        return;
    }
    let _ = simd;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = super::quant::f16_to_f32(s);
    }
}

#[allow(clippy::too_many_arguments)]
fn attention_forward_f16_with(
    q: &[f32],
    k: &[u16],
    v: &[u16],
    out: &mut [f32],
    lse: &mut [f32],
    dims: &AttnDims,
    doc_ids: Option<&[u32]>,
    simd: bool,
) {
    use super::features::{note, CpuLevel};
    note(if simd { CpuLevel::Avx512 } else { CpuLevel::Portable });
    let d = dims;
    assert!(d.kv_heads > 0 && d.q_heads.is_multiple_of(d.kv_heads));
    assert!(d.kv_len <= d.kv_stride);
    assert!(q.len() >= q_elems(d) && k.len() >= kv_elems(d) && v.len() >= kv_elems(d));
    assert!(out.len() >= q_elems(d) && lse.len() >= lse_elems(d));
    if d.q_len > F16_DIRECT_MAX_Q || doc_ids.is_some() {
        // Widen the valid positions of each sequence into a dense [batch, kv_len] copy.
        let w = d.kv_heads * d.head_dim;
        let (mut kf, mut vf) = (vec![0.0f32; d.batch * d.kv_len * w], vec![0.0f32; d.batch * d.kv_len * w]);
        for (src, dst) in [(k, &mut kf), (v, &mut vf)] {
            if d.kv_len * w > 0 {
                dst.par_chunks_mut(d.kv_len * w).enumerate().for_each(|(b, dst)| {
                    let s = &src[b * d.kv_stride * w..];
                    dst.par_chunks_mut(4096).enumerate().for_each(|(i, c)| {
                        f16_to_f32_slice(&s[i * 4096..], c, simd);
                    });
                });
            }
        }
        let dense = AttnDims { kv_stride: d.kv_len, ..*d };
        attention_forward(q, &kf, &vf, out, lse, &dense, doc_ids, AttnTiles::for_forward(&dense));
        return;
    }
    decode_f16(q, k, v, out, lse, d, simd);
}

/// Partial softmax results of one run of keys for the `rows` queries of a `(sequence, kv head)`
/// group: per row the running maximum, the sum of exponentials and the unnormalised output.
struct Partial {
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

/// The direct kernel of [`attention_forward_f16`]: tasks over `(sequence, kv head, run of
/// [`F16_KEYS_PER_TASK`] keys)`, each computing the scores, probabilities and value sums of
/// every query head of the group and query of the call, then a merge per `(sequence, kv head)`.
fn decode_f16(q: &[f32], k: &[u16], v: &[u16], out: &mut [f32], lse: &mut [f32], d: &AttnDims, simd: bool) {
    let hd = d.head_dim;
    let grp = d.q_heads / d.kv_heads;
    let rows = grp * d.q_len;
    let ks = d.kv_heads * hd;
    let s_hi = d.kv_len.min(d.q_offset + d.q_len);
    let nch = s_hi.div_ceil(F16_KEYS_PER_TASK);
    let pairs = d.batch * d.kv_heads;
    let q_off = |b: usize, t: usize, h: usize| ((b * d.q_len + t) * d.q_heads + h) * hd;
    // Row r of a group is query t = r / grp of head g · grp + r % grp.
    let partials: Vec<Partial> = (0..pairs * nch)
        .into_par_iter()
        .map_init(
            || vec![0.0f32; rows * F16_KEYS_PER_TASK],
            |s, task| {
                let (p, c) = (task / nch, task % nch);
                let (b, g) = (p / d.kv_heads, p % d.kv_heads);
                let s0 = c * F16_KEYS_PER_TASK;
                let n = F16_KEYS_PER_TASK.min(s_hi - s0);
                let kp = &k[(b * d.kv_stride + s0) * ks + g * hd..];
                let vp = &v[(b * d.kv_stride + s0) * ks + g * hd..];
                let qrows: Vec<&[f32]> = (0..rows)
                    .map(|r| {
                        let o = q_off(b, r / grp, g * grp + r % grp);
                        &q[o..o + hd]
                    })
                    .collect();
                let s = &mut s[..rows * n];
                scores_f16(&qrows, kp, ks, n, hd, d.scale, s, simd);
                let mut part = Partial {
                    m: vec![f32::NEG_INFINITY; rows],
                    l: vec![0.0; rows],
                    acc: vec![0.0; rows * hd],
                };
                for r in 0..rows {
                    // Keys s0 + j visible to query t: s0 + j <= q_offset + t.
                    let vis = (d.q_offset + r / grp + 1).saturating_sub(s0).min(n);
                    let row = &mut s[r * n..(r + 1) * n];
                    row[vis..].fill(0.0);
                    if vis == 0 {
                        continue;
                    }
                    let m = vector::max(&row[..vis]);
                    if m == f32::NEG_INFINITY {
                        row[..vis].fill(0.0);
                        continue;
                    }
                    part.l[r] = vector::exp_sub_sum(&mut row[..vis], m);
                    part.m[r] = m;
                }
                accumulate_f16(s, vp, ks, n, hd, &mut part.acc, simd);
                part
            },
        )
        .collect();
    // The merge is a few thousand multiply-adds per call (pairs × rows × runs × head_dim): on
    // the calling thread, which saves the pool a second fork-join per layer and token.
    for p in 0..pairs {
        let (b, g) = (p / d.kv_heads, p % d.kv_heads);
        let parts = &partials[p * nch..(p + 1) * nch];
        for r in 0..rows {
            let (t, h) = (r / grp, g * grp + r % grp);
            let o = &mut out[q_off(b, t, h)..q_off(b, t, h) + hd];
            let le = &mut lse[(b * d.q_heads + h) * d.q_len + t..][..1];
            let m = parts.iter().fold(f32::NEG_INFINITY, |m, pt| m.max(pt.m[r]));
            if m == f32::NEG_INFINITY {
                o.fill(0.0);
                le[0] = f32::NEG_INFINITY;
                continue;
            }
            o.fill(0.0);
            let mut l = 0.0f32;
            for pt in parts.iter().filter(|pt| pt.m[r] != f32::NEG_INFINITY) {
                let w = (pt.m[r] - m).exp();
                l += w * pt.l[r];
                for (o, &a) in o.iter_mut().zip(&pt.acc[r * hd..(r + 1) * hd]) {
                    *o += w * a;
                }
            }
            let inv = 1.0 / l;
            o.iter_mut().for_each(|x| *x *= inv);
            le[0] = m + l.ln();
        }
    }
}

/// `s[r · n + j] = scale · qrows[r] · k_j` for the `n` f16 key rows at `k` (row stride `ks`).
#[allow(clippy::too_many_arguments)]
fn scores_f16(
    qrows: &[&[f32]],
    k: &[u16],
    ks: usize,
    n: usize,
    hd: usize,
    scale: f32,
    s: &mut [f32],
    simd: bool,
) {
    assert!(n == 0 || k.len() >= (n - 1) * ks + hd);
    assert!(s.len() >= qrows.len() * n && qrows.iter().all(|q| q.len() >= hd));
    #[cfg(target_arch = "x86_64")]
    if simd && hd.is_multiple_of(16) {
        let mut r = 0;
        while r < qrows.len() {
            let take = (qrows.len() - r).min(4);
            let dst = s[r * n..].as_mut_ptr();
            // SAFETY: AVX-512F and F16C were detected (`simd`); the key rows and the query rows
            // are in bounds (asserted above), and `dst` holds `take` rows of `n`.
            unsafe {
                match take {
                    4 => f16x::scores::<4>(&qrows[r..r + 4], k.as_ptr(), ks, n, hd, scale, dst),
                    3 => f16x::scores::<3>(&qrows[r..r + 3], k.as_ptr(), ks, n, hd, scale, dst),
                    2 => f16x::scores::<2>(&qrows[r..r + 2], k.as_ptr(), ks, n, hd, scale, dst),
                    _ => f16x::scores::<1>(&qrows[r..r + 1], k.as_ptr(), ks, n, hd, scale, dst),
                }
            }
            r += take;
        }
        return;
    }
    let _ = simd;
    let mut kf = vec![0.0f32; hd];
    for j in 0..n {
        f16_to_f32_slice(&k[j * ks..j * ks + hd], &mut kf, false);
        for (r, q) in qrows.iter().enumerate() {
            s[r * n + j] = scale * dot(&q[..hd], &kf);
        }
    }
}

/// `acc[r · hd..] += Σ_j p[r · n + j] · v_j` for the `n` f16 value rows at `v` (row stride `ks`)
/// and the `acc.len() / hd` rows of probabilities in `p`.
fn accumulate_f16(p: &[f32], v: &[u16], ks: usize, n: usize, hd: usize, acc: &mut [f32], simd: bool) {
    let rows = acc.len() / hd.max(1);
    assert!(n == 0 || v.len() >= (n - 1) * ks + hd);
    assert!(p.len() >= rows * n);
    #[cfg(target_arch = "x86_64")]
    if simd && hd.is_multiple_of(16) {
        // Rows per pass: as many as keep the accumulators in registers.
        let per_pass = if hd == 128 { 2 } else { 4 };
        let mut r = 0;
        while r < rows {
            let take = (rows - r).min(per_pass);
            let (pp, ap) = (p[r * n..].as_ptr(), acc[r * hd..].as_mut_ptr());
            // SAFETY: AVX-512F and F16C were detected (`simd`); the value rows are in bounds
            // (asserted above), `pp` holds `take` rows of `n` and `ap` `take` rows of `hd`.
            unsafe {
                match (hd, take) {
                    // Head sizes 64 and 128 (SmolLM2, Llama 3): accumulators in registers.
                    (64, 4) => f16x::accumulate_regs::<4, 4>(pp, n, v.as_ptr(), ks, ap),
                    (64, 3) => f16x::accumulate_regs::<3, 4>(pp, n, v.as_ptr(), ks, ap),
                    (64, 2) => f16x::accumulate_regs::<2, 4>(pp, n, v.as_ptr(), ks, ap),
                    (64, _) => f16x::accumulate_regs::<1, 4>(pp, n, v.as_ptr(), ks, ap),
                    (128, 1) => f16x::accumulate_regs::<1, 8>(pp, n, v.as_ptr(), ks, ap),
                    (128, _) => f16x::accumulate_regs::<2, 8>(pp, n, v.as_ptr(), ks, ap),
                    (_, 4) => f16x::accumulate::<4>(pp, n, v.as_ptr(), ks, hd, ap),
                    (_, 3) => f16x::accumulate::<3>(pp, n, v.as_ptr(), ks, hd, ap),
                    (_, 2) => f16x::accumulate::<2>(pp, n, v.as_ptr(), ks, hd, ap),
                    _ => f16x::accumulate::<1>(pp, n, v.as_ptr(), ks, hd, ap),
                }
            }
            r += take;
        }
        return;
    }
    let _ = simd;
    let mut vf = vec![0.0f32; hd];
    for j in 0..n {
        f16_to_f32_slice(&v[j * ks..j * ks + hd], &mut vf, false);
        for r in 0..rows {
            let pr = p[r * n + j];
            if pr != 0.0 {
                for (a, &x) in acc[r * hd..(r + 1) * hd].iter_mut().zip(&vf) {
                    *a += pr * x;
                }
            }
        }
    }
}

// Index loops over the small register arrays read better than iterator chains here.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod f16x {
    use std::arch::x86_64::*;

    /// How many rows ahead the kernels prefetch: the cache streams from memory (it is read once
    /// per token), at a stride of `kv_heads` rows, which the hardware prefetchers follow poorly.
    const PREFETCH_ROWS: usize = 8;

    /// Prefetches the cache lines of the `hd` f16 values at `p` (which may lie outside any
    /// buffer: prefetches never fault).
    #[inline(always)]
    unsafe fn prefetch_row(p: *const u16, hd: usize) {
        let b = p.cast::<i8>();
        let mut off = 0;
        while off < 2 * hd {
            // SAFETY: a prefetch reads nothing and never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(off)) };
            off += 64;
        }
        // SAFETY: as above (the row's last byte, in case the row straddles one more line).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(2 * hd - 1)) };
    }

    /// `acc[r · hd + c] += Σ_j p[r · n + j] · v_j[c]` for `R` rows and `n` value rows of
    /// `hd = 16 · NC` f16 values at stride `vs`, with all `R · NC` accumulators in registers:
    /// each value row is loaded and converted once.
    ///
    /// # Safety
    /// AVX-512F and F16C must be available; `p` must hold `R` rows of `n`, `v` `n` rows of
    /// `16 · NC` at stride `vs`, `acc` `R` rows of `16 · NC`.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn accumulate_regs<const R: usize, const NC: usize>(
        p: *const f32,
        n: usize,
        v: *const u16,
        vs: usize,
        acc: *mut f32,
    ) {
        let hd = 16 * NC;
        // SAFETY: the accesses stay within the rows of the contract (prefetches never fault).
        unsafe {
            let mut a: [[__m512; NC]; R] =
                std::array::from_fn(|r| std::array::from_fn(|c| _mm512_loadu_ps(acc.add(r * hd + 16 * c))));
            for j in 0..n {
                prefetch_row(v.wrapping_add((j + PREFETCH_ROWS) * vs), hd);
                let vp = v.add(j * vs);
                let vv: [__m512; NC] =
                    std::array::from_fn(|c| _mm512_cvtph_ps(_mm256_loadu_si256(vp.add(16 * c).cast())));
                for r in 0..R {
                    let pr = _mm512_set1_ps(*p.add(r * n + j));
                    for c in 0..NC {
                        a[r][c] = _mm512_fmadd_ps(pr, vv[c], a[r][c]);
                    }
                }
            }
            for r in 0..R {
                for c in 0..NC {
                    _mm512_storeu_ps(acc.add(r * hd + 16 * c), a[r][c]);
                }
            }
        }
    }

    /// Widens `n` f16 values at `src` to f32 at `dst`.
    ///
    /// # Safety
    /// AVX-512F and F16C must be available; `src` and `dst` must hold `n` values.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn widen(src: *const u16, dst: *mut f32, n: usize) {
        // SAFETY: every access is below `n` (the contract).
        unsafe {
            let mut i = 0;
            while i + 16 <= n {
                _mm512_storeu_ps(dst.add(i), _mm512_cvtph_ps(_mm256_loadu_si256(src.add(i).cast())));
                i += 16;
            }
            while i < n {
                *dst.add(i) = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(*src.add(i)))));
                i += 1;
            }
        }
    }

    /// `dst[r · n + j] = scale · q[r] · k_j` for `R` query rows and `n` key rows of `hd` f16
    /// values at stride `ks`: each key row is converted once, in registers, for all `R` rows.
    ///
    /// # Safety
    /// AVX-512F and F16C must be available; `hd` a multiple of 16; every `q[r]` at least `hd`
    /// long; `k` must hold `n` rows at stride `ks` and `dst` `R` rows of `n`.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn scores<const R: usize>(
        q: &[&[f32]],
        k: *const u16,
        ks: usize,
        n: usize,
        hd: usize,
        scale: f32,
        dst: *mut f32,
    ) {
        let qp: [*const f32; R] = std::array::from_fn(|r| q[r].as_ptr());
        // SAFETY: the accesses stay within the rows of the contract (prefetches never fault).
        unsafe {
            for j in 0..n {
                prefetch_row(k.wrapping_add((j + PREFETCH_ROWS) * ks), hd);
                let kp = k.add(j * ks);
                let mut acc = [_mm512_setzero_ps(); R];
                let mut c = 0;
                while c < hd {
                    let kv = _mm512_cvtph_ps(_mm256_loadu_si256(kp.add(c).cast()));
                    for r in 0..R {
                        acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(qp[r].add(c)), kv, acc[r]);
                    }
                    c += 16;
                }
                for r in 0..R {
                    *dst.add(r * n + j) = scale * _mm512_reduce_add_ps(acc[r]);
                }
            }
        }
    }

    /// `acc[r · hd + c] += Σ_j p[r · n + j] · v_j[c]` for `R` rows and `n` value rows of `hd`
    /// f16 values at stride `vs`: per 16 columns, the `R` accumulators stay in registers over
    /// all `n` rows.
    ///
    /// # Safety
    /// AVX-512F and F16C must be available; `hd` a multiple of 16; `p` must hold `R` rows of `n`,
    /// `v` `n` rows at stride `vs`, `acc` `R` rows of `hd`.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn accumulate<const R: usize>(
        p: *const f32,
        n: usize,
        v: *const u16,
        vs: usize,
        hd: usize,
        acc: *mut f32,
    ) {
        // SAFETY: the accesses stay within the rows of the contract.
        unsafe {
            let mut c = 0;
            while c < hd {
                let mut a: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(acc.add(r * hd + c)));
                for j in 0..n {
                    let vv = _mm512_cvtph_ps(_mm256_loadu_si256(v.add(j * vs + c).cast()));
                    for r in 0..R {
                        a[r] = _mm512_fmadd_ps(_mm512_set1_ps(*p.add(r * n + j)), vv, a[r]);
                    }
                }
                for r in 0..R {
                    _mm512_storeu_ps(acc.add(r * hd + c), a[r]);
                }
                c += 16;
            }
        }
    }
}

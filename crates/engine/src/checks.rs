//! Argument checks shared by the backends: one function per operation, over element counts,
//! so that every device refuses the same calls with the same [`EngineError::Shape`] errors
//! before touching memory.

use crate::cpu::attention::{kv_elems, lse_elems, q_elems};
use crate::error::ensure;
use crate::{AttnDims, EngineError, Result, IGNORE_INDEX};

/// A buffer of `have` elements where `need` are used.
pub(crate) fn need(op: &'static str, name: &str, have: usize, need: usize) -> Result<()> {
    ensure(have >= need, op, || format!("{name} has {have} elements, needs {need}"))
}

/// Several buffers (name, elements) that must each hold `n` elements.
pub(crate) fn each(op: &'static str, n: usize, bufs: &[(&str, usize)]) -> Result<()> {
    bufs.iter().try_for_each(|&(name, have)| need(op, name, have, n))
}

/// `n` elements from `src_off` of a `src`-element buffer to `dst_off` of a `dst`-element one.
pub(crate) fn ranges(
    op: &'static str,
    src: usize,
    src_off: usize,
    dst: usize,
    dst_off: usize,
    n: usize,
) -> Result<()> {
    need(op, "src", src, src_off.saturating_add(n))?;
    need(op, "dst", dst, dst_off.saturating_add(n))
}

/// `a · b · …` for sizes, as a shape error on overflow.
pub(crate) fn mul(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| EngineError::Shape { op, what: format!("size {dims:?} overflows") })
}

/// Token ids must index the `vocab` rows of a table.
pub(crate) fn ids(op: &'static str, ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&i| i as usize >= vocab) {
        Some(i) => {
            Err(EngineError::Shape { op, what: format!("token id {i} out of range for {vocab} rows") })
        }
        None => Ok(()),
    }
}

/// Targets are token ids or the ignore index.
pub(crate) fn targets(op: &'static str, targets: &[i32], vocab: usize) -> Result<()> {
    match targets.iter().find(|&&t| t != IGNORE_INDEX && (t < 0 || t as usize >= vocab)) {
        Some(t) => Err(EngineError::Shape {
            op,
            what: format!("target {t} out of range for vocab {vocab} (ignore index is -100)"),
        }),
        None => Ok(()),
    }
}

/// A product of a `[rows, k]` input with a weight into `[rows, n]` (`linear`: input `x` over
/// `in` columns; `linear_backward_input`: input `dy` over `out` columns).
pub(crate) fn product(
    op: &'static str,
    input: (&str, usize),
    output: (&str, usize),
    rows: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    need(op, input.0, input.1, mul(op, &[rows, k])?)?;
    need(op, output.0, output.1, mul(op, &[rows, n])?)
}

/// `c[m, n] = a[m, k] · b[k, n]` (transposes change nothing in the sizes).
pub(crate) fn matmul(a: usize, b: usize, c: usize, m: usize, n: usize, k: usize) -> Result<()> {
    let op = "matmul";
    need(op, "a", a, mul(op, &[m, k])?)?;
    need(op, "b", b, mul(op, &[k, n])?)?;
    need(op, "c", c, mul(op, &[m, n])?)
}

/// Embedding lookup of `ids` in a `[vocab, dim]` table into `out`.
pub(crate) fn embedding(ids: &[u32], vocab: usize, dim: usize, out: usize) -> Result<()> {
    let op = "embedding";
    need(op, "out", out, mul(op, &[ids.len(), dim])?)?;
    self::ids(op, ids, vocab)
}

/// Backward of an embedding lookup into a table gradient of `dtable` elements.
pub(crate) fn embedding_backward(ids: &[u32], dout: usize, dtable: usize, dim: usize) -> Result<()> {
    let op = "embedding_backward";
    ensure(dim > 0 || ids.is_empty(), op, || "dim is 0".into())?;
    need(op, "dout", dout, mul(op, &[ids.len(), dim])?)?;
    match dtable.checked_div(dim) {
        Some(vocab) => self::ids(op, ids, vocab),
        None => Ok(()),
    }
}

/// RMSNorm of `rows × dim` values; returns `rows · dim`.
pub(crate) fn rmsnorm(x: usize, w: usize, out: usize, rstd: usize, rows: usize, dim: usize) -> Result<usize> {
    let op = "rmsnorm";
    let n = mul(op, &[rows, dim])?;
    each(op, n, &[("x", x), ("out", out)])?;
    need(op, "w", w, dim)?;
    need(op, "rstd", rstd, rows)?;
    Ok(n)
}

/// Backward of [`rmsnorm`] (`dw` when the gain is trained); returns `rows · dim`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm_backward(
    dout: usize,
    x: usize,
    w: usize,
    rstd: usize,
    dx: usize,
    dw: Option<usize>,
    rows: usize,
    dim: usize,
) -> Result<usize> {
    let op = "rmsnorm_backward";
    let n = mul(op, &[rows, dim])?;
    each(op, n, &[("dout", dout), ("x", x), ("dx", dx)])?;
    need(op, "w", w, dim)?;
    need(op, "rstd", rstd, rows)?;
    if let Some(dw) = dw {
        need(op, "dw", dw, dim)?;
    }
    Ok(n)
}

/// Rotary embedding of `tokens × heads` vectors of `head_dim`.
pub(crate) fn rope(
    x: usize,
    positions: usize,
    inv_freq: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    let op = "rope";
    ensure(head_dim.is_multiple_of(2), op, || format!("head_dim {head_dim} is odd"))?;
    need(op, "x", x, mul(op, &[tokens, heads, head_dim])?)?;
    need(op, "positions", positions, tokens)?;
    need(op, "inv_freq", inv_freq, head_dim / 2)
}

/// Attention's dimensions and document ids, and its buffers: those shaped like the queries,
/// those shaped like the keys, and the log-sum-exp.
pub(crate) fn attention(
    op: &'static str,
    d: &AttnDims,
    doc_ids: Option<&[u32]>,
    q_like: &[(&str, usize)],
    kv_like: &[(&str, usize)],
    lse: usize,
) -> Result<()> {
    ensure(d.kv_heads > 0 && d.q_heads.is_multiple_of(d.kv_heads), op, || {
        format!("q_heads {} is not a multiple of kv_heads {}", d.q_heads, d.kv_heads)
    })?;
    ensure(d.kv_len <= d.kv_stride, op, || format!("kv_len {} > kv_stride {}", d.kv_len, d.kv_stride))?;
    mul(op, &[d.batch, d.q_len, d.q_heads, d.head_dim])?;
    mul(op, &[d.batch, d.kv_stride, d.kv_heads, d.head_dim])?;
    if let Some(doc) = doc_ids {
        ensure(d.q_offset + d.q_len <= d.kv_len, op, || {
            format!("doc_ids need q_offset + q_len ({}) <= kv_len ({})", d.q_offset + d.q_len, d.kv_len)
        })?;
        need(op, "doc_ids", doc.len(), d.batch * d.kv_len)?;
    }
    each(op, q_elems(d), q_like)?;
    each(op, kv_elems(d), kv_like)?;
    need(op, "lse", lse, lse_elems(d))
}

/// Cross-entropy of `rows × vocab` logits; returns `rows · vocab`.
pub(crate) fn cross_entropy(
    logits: usize,
    targets: &[i32],
    losses: usize,
    dlogits: Option<usize>,
    rows: usize,
    vocab: usize,
) -> Result<usize> {
    let op = "cross_entropy";
    ensure(vocab > 0 || rows == 0, op, || "vocab is 0".into())?;
    let n = mul(op, &[rows, vocab])?;
    need(op, "logits", logits, n)?;
    need(op, "targets", targets.len(), rows)?;
    need(op, "losses", losses, rows)?;
    if let Some(d) = dlogits {
        need(op, "dlogits", d, n)?;
    }
    self::targets(op, &targets[..rows], vocab).map(|()| n)
}

/// The output projection fused with cross-entropy: `rows × dim` hidden states against a
/// `[vocab, dim]` weight.
pub(crate) fn linear_cross_entropy(
    h: usize,
    targets: &[i32],
    dh: Option<usize>,
    dw: Option<usize>,
    rows: usize,
    dim: usize,
    vocab: usize,
) -> Result<()> {
    let op = "linear_cross_entropy";
    ensure(vocab > 0, op, || "vocab is 0".into())?;
    let n = mul(op, &[rows, dim])?;
    need(op, "h", h, n)?;
    need(op, "targets", targets.len(), rows)?;
    if let Some(d) = dh {
        need(op, "dh", d, n)?;
    }
    if let Some(d) = dw {
        need(op, "dw", d, mul(op, &[vocab, dim])?)?;
    }
    self::targets(op, &targets[..rows], vocab)
}

/// The distillation head: `rows × dim` student hidden states against a `[vocab, dim]` weight and
/// `rows × dim_t` teacher hidden states against a `[vocab_t, dim_t]` one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_distill(
    hs: usize,
    ht: usize,
    targets: &[i32],
    dh: Option<usize>,
    dw: Option<usize>,
    rows: usize,
    (vocab, dim): (usize, usize),
    (vocab_t, dim_t): (usize, usize),
    spec: &crate::DistillSpec,
) -> Result<()> {
    let op = "linear_distill";
    ensure(vocab > 0, op, || "vocab is 0".into())?;
    ensure(vocab == vocab_t, op, || {
        format!(
            "the teacher's output weight has {vocab_t} rows and the student's {vocab}: \
             distillation needs the same vocabulary (tokenizer)"
        )
    })?;
    let t = spec.temperature;
    ensure(t.is_finite() && t > 0.0, op, || format!("temperature {t} is not a positive number"))?;
    for (name, v) in [("kd_grad_scale", spec.kd_grad_scale), ("ce_grad_scale", spec.ce_grad_scale)] {
        ensure(v.is_finite(), op, || format!("{name} {v} is not finite"))?;
    }
    let n = mul(op, &[rows, dim])?;
    need(op, "hs", hs, n)?;
    need(op, "ht", ht, mul(op, &[rows, dim_t])?)?;
    need(op, "targets", targets.len(), rows)?;
    if let Some(d) = dh {
        need(op, "dh", d, n)?;
    }
    if let Some(d) = dw {
        need(op, "dw", d, mul(op, &[vocab, dim])?)?;
    }
    self::targets(op, &targets[..rows], vocab)
}

/// [`crate::Backend::linear_log_probs_backward`]'s upstream gradient: one finite value per row.
pub(crate) fn log_prob_upstream(upstream: &[f32], rows: usize) -> Result<()> {
    let op = "linear_log_probs_backward";
    need(op, "upstream", upstream.len(), rows)?;
    ensure(upstream[..rows].iter().all(|g| g.is_finite()), op, || "upstream gradient is not finite".into())
}

/// Dropout of `n` values with probability `p`.
pub(crate) fn dropout(x: usize, out: usize, n: usize, p: f32) -> Result<()> {
    let op = "dropout";
    each(op, n, &[("x", x), ("out", out)])?;
    ensure((0.0..1.0).contains(&p), op, || format!("probability {p} is not in [0, 1)"))
}

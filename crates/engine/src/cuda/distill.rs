//! The knowledge distillation head on the GPU ([`Backend::linear_distill`]), the same chunked
//! scheme as the fused cross-entropy: for each chunk of rows, the student's and the teacher's
//! logits by cuBLAS into two f32 tiles, one `distill_*` kernel (kernels.cu) that turns them into
//! per-row divergences, cross-entropies and the logits' gradient, then the gradient's products
//! with the student's weight (`dh`) and hidden states (`dw`).

use cudarc::driver::CudaSlice;

use super::blas::{Dt, Operand};
use super::module::drv;
use super::{int, CudaBackend, CudaBuf, CudaWeight};
use crate::checks;
use crate::{DistillSpec, DistillSums, Divergence, Result};
use afinar_formats::IGNORE_INDEX;

/// Logits per tile (f32 elements: 128 MiB per tile, two tiles and a gradient tile).
const TILE: usize = 32 << 20;

/// Device buffers of the teacher's side, kept apart from the student's (which use the
/// backend's product scratch) because both are live within one chunk.
#[derive(Default)]
pub struct DistillScratch {
    /// Teacher hidden states rounded to bf16.
    act: Option<CudaSlice<u16>>,
    /// A quantized teacher weight dequantized to bf16.
    weight: Option<CudaSlice<u16>>,
    /// Teacher logits of a chunk.
    logits: Option<CudaSlice<f32>>,
    /// Per-row divergences then cross-entropies (`2 · rows`).
    sums: Option<CudaSlice<f32>>,
}

/// See [`Backend::linear_distill`].
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_distill(
    be: &CudaBackend,
    hs: &CudaBuf,
    ws: &CudaWeight,
    ht: &CudaBuf,
    wt: &CudaWeight,
    targets: &[i32],
    rows: usize,
    spec: &DistillSpec,
    dh: Option<&mut CudaBuf>,
    dw: Option<&mut CudaBuf>,
) -> Result<DistillSums> {
    let (vocab, dim, dim_t) = (ws.rows, ws.cols, wt.cols);
    let (dh_len, dw_len) = (dh.as_deref().map(|d| d.len), dw.as_deref().map(|d| d.len));
    let (s_shape, t_shape) = ((ws.rows, ws.cols), (wt.rows, wt.cols));
    checks::linear_distill(hs.len, ht.len, targets, dh_len, dw_len, rows, s_shape, t_shape, spec)?;
    let count = targets[..rows].iter().filter(|&&t| t != IGNORE_INDEX).count();
    if rows == 0 || count == 0 && dh.is_none() && dw.is_none() {
        return Ok(DistillSums { count, ..DistillSums::default() });
    }
    let want_grad = dh.is_some() || dw.is_some();
    let (dh_ptr, dw_ptr) = (dh.map(|d| be.bptr(d)), dw.map(|d| be.bptr(d)));
    let div: i32 = match spec.divergence {
        Divergence::ForwardKl => 0,
        Divergence::ReverseKl => 1,
        Divergence::Jsd => 2,
    };
    let inv_t = if spec.temperature == 1.0 { 1.0 } else { 1.0 / spec.temperature };
    let mut sc = be.lock();
    let sc = &mut *sc;
    let wop = be.weight_operand(ws, &mut sc.weight)?;
    let top = be.weight_operand(wt, &mut sc.distill.weight)?;
    let bf = wop.dt == Dt::BF16;
    let chunk = (TILE / vocab).clamp(1, rows);
    let t_all = be.upload(&targets[..rows])?;
    let sums_ptr = be.ptr(be.grow(&mut sc.distill.sums, 2 * rows)?);
    let s_logits = be.ptr(be.grow(&mut sc.logits, chunk * vocab)?);
    let t_logits = be.ptr(be.grow(&mut sc.distill.logits, chunk * vocab)?);
    let dlog = if !want_grad {
        0
    } else if bf {
        be.ptr(be.grow(&mut sc.dlogits, chunk * vocab)?)
    } else {
        be.ptr(be.grow(&mut sc.dlogits32, chunk * vocab)?)
    };
    let hop_all = be.act_operand(be.bptr(hs), rows * dim, dim, wop.dt, &mut sc.act)?;
    let top_all = be.act_operand(be.bptr(ht), rows * dim_t, dim_t, top.dt, &mut sc.distill.act)?;
    let esz = |dt: Dt| if dt == Dt::BF16 { 2u64 } else { 4 };
    let mut r0 = 0;
    while r0 < rows {
        let rc = chunk.min(rows - r0);
        let hop = Operand { ptr: hop_all.ptr + esz(hop_all.dt) * (r0 * dim) as u64, ..hop_all };
        let htop = Operand { ptr: top_all.ptr + esz(top_all.dt) * (r0 * dim_t) as u64, ..top_all };
        be.product(hop, false, wop, true, s_logits, vocab, rc, vocab, dim, 1.0, 0.0)?;
        be.product(htop, false, top, true, t_logits, vocab, rc, vocab, dim_t, 1.0, 0.0)?;
        be.launch(
            if bf { "distill_bf16" } else { "distill_f32" },
            CudaBackend::rows_cfg(rc, 1024),
            &[
                s_logits.into(),
                t_logits.into(),
                (be.ptr(&t_all) + 4 * r0 as u64).into(),
                (sums_ptr + 4 * r0 as u64).into(),
                (sums_ptr + 4 * (rows + r0) as u64).into(),
                dlog.into(),
                int(rc, "rows")?.into(),
                int(vocab, "vocab")?.into(),
                div.into(),
                inv_t.into(),
                spec.kd_grad_scale.into(),
                spec.ce_grad_scale.into(),
            ],
        )?;
        if want_grad {
            let g = Operand { ptr: dlog, dt: wop.dt, ld: vocab };
            if let Some(dh) = dh_ptr {
                be.product(g, false, wop, false, dh + 4 * (r0 * dim) as u64, dim, rc, dim, vocab, 1.0, 0.0)?;
            }
            if let Some(dw) = dw_ptr {
                be.product(g, true, hop, false, dw, dim, vocab, dim, rc, 1.0, 1.0)?;
            }
        }
        r0 += rc;
    }
    let mut per_row = vec![0f32; 2 * rows];
    let sums = sc.distill.sums.as_ref().expect("grown above");
    be.stream.memcpy_dtoh(&sums.slice(..2 * rows), &mut per_row[..]).map_err(drv)?;
    be.stream.synchronize().map_err(drv)?;
    let mut out = DistillSums { count, ..DistillSums::default() };
    for (r, _) in targets[..rows].iter().enumerate().filter(|(_, &t)| t != IGNORE_INDEX) {
        out.kd += per_row[r] as f64;
        out.ce += per_row[rows + r] as f64;
    }
    Ok(out)
}

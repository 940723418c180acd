//! Token embedding lookup and its backward (scatter-add into the table gradient).

use super::float::{Real, SendPtr};
use super::matmul::{bf16_to, WeightRef};
use rayon::prelude::*;

/// `out[i, :] = table[ids[i], :]` for a `[vocab, dim]` table.
///
/// # Panics
/// When an id is out of range or a slice is too short.
pub fn embedding_forward<T: Real>(ids: &[u32], table: WeightRef<'_, T>, out: &mut [T], dim: usize) {
    if dim == 0 {
        return;
    }
    out[..ids.len() * dim].par_chunks_mut(dim).zip(ids.par_iter()).for_each(|(o, &id)| {
        let r = id as usize * dim;
        match table {
            WeightRef::Dense(t) => o.copy_from_slice(&t[r..r + dim]),
            WeightRef::Bf16(t) => bf16_to(&t[r..r + dim], o),
            // Only the looked-up row is dequantized.
            WeightRef::Quant(q) => super::quant::dequantize_rows(q, id as usize, o),
        }
    });
}

/// `dtable[ids[i], :] += dout[i, :]`. Rows are grouped by id so that each table row is written
/// by one task, in the order the ids appear.
///
/// # Panics
/// When an id is out of range or a slice is too short.
pub fn embedding_backward<T: Real>(ids: &[u32], dout: &[T], dtable: &mut [T], dim: usize) {
    if dim == 0 || ids.is_empty() {
        return;
    }
    assert!(dout.len() >= ids.len() * dim);
    let vocab = dtable.len() / dim;
    assert!(ids.iter().all(|&i| (i as usize) < vocab));
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i]); // stable: keeps occurrence order within an id
    let groups: Vec<&[usize]> = order.chunk_by(|&a, &b| ids[a] == ids[b]).collect();
    let ptr = SendPtr(dtable.as_mut_ptr());
    groups.par_iter().for_each(|g| {
        let id = ids[g[0]] as usize;
        // SAFETY: each group has a distinct id, so each table row is written by one task only;
        // the id is < vocab (checked above).
        let row = unsafe { ptr.slice(id * dim, dim) };
        for &i in g.iter() {
            for (d, s) in row.iter_mut().zip(&dout[i * dim..(i + 1) * dim]) {
                *d += *s;
            }
        }
    });
}

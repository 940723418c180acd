//! Batching: shuffled per epoch from `(seed, epoch)`, padded or packed, resumable at any batch.

use crate::rng::Rng;
use crate::{DataError, Dataset, Sample, IGNORE_INDEX};

/// A batch of `batch` rows of `seq` tokens, every array row-major `[batch * seq]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Token ids; padding is the loader's pad id.
    pub ids: Vec<u32>,
    /// Shifted next-token targets, -100 where there is no loss (prompts, padding, the last token
    /// of each document).
    pub labels: Vec<i32>,
    /// Position of each token within its document (RoPE positions): packed rows restart at 0 at
    /// each document and at the padding; unpacked rows count 0..seq.
    pub positions: Vec<u32>,
    /// Packed batches: the document index of each token within its row (0, 1, 2, … and the
    /// padding one more than the last document), for block-causal attention. `None` unpacked.
    pub doc_ids: Option<Vec<u32>>,
    /// Rows.
    pub batch: usize,
    /// Tokens per row: `max_seq_len` when packed, the longest sample of the batch otherwise.
    pub seq: usize,
    /// Positions with a target (labels other than -100): the tokens a tokens/s figure counts.
    pub label_tokens: usize,
}

/// Serves a [`Dataset`] in batches, epoch by epoch.
///
/// The order of an epoch depends only on `(seed, epoch)` (and the dataset), so a run restarted at
/// `(epoch, batch k)` with [`Loader::epoch_from`] sees exactly the batches it would have seen.
#[derive(Clone, Copy, Debug)]
pub struct Loader<'a> {
    ds: &'a Dataset,
    walk: Epochs,
    pad_id: u32,
}

/// The walk through `examples` examples that every loader shares: `batch_size` per batch, the
/// order of each epoch a permutation drawn from `(seed, epoch)` when shuffling (the identity
/// otherwise), a smaller last batch kept unless `drop_last`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epochs {
    examples: usize,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
}

impl Epochs {
    /// A walk of `batch_size` examples per batch (at least 1).
    pub(crate) fn new(
        examples: usize,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
    ) -> Result<Self, DataError> {
        if batch_size == 0 {
            return Err(DataError::Config("batch size must be at least 1".into()));
        }
        Ok(Epochs { examples, batch_size, shuffle, seed, drop_last: false })
    }

    /// The same walk, leaving out (or keeping) each epoch's smaller last batch.
    pub(crate) fn drop_last(self, drop_last: bool) -> Self {
        Epochs { drop_last, ..self }
    }

    /// Batches in one epoch.
    pub(crate) fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.examples / self.batch_size
        } else {
            self.examples.div_ceil(self.batch_size)
        }
    }

    /// `(epoch, batch within the epoch)` of the `step`-th batch of a run (0-based).
    pub(crate) fn locate(&self, step: usize) -> (usize, usize) {
        let per = self.batches_per_epoch().max(1);
        (step / per, step % per)
    }

    /// The order examples are visited in `epoch`.
    pub(crate) fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.examples).collect();
        if self.shuffle {
            Rng::for_epoch(self.seed, epoch as u64).shuffle(&mut order);
        }
        order
    }

    /// The examples of batch `index` of an epoch visited in `order`.
    pub(crate) fn batch_of<'o>(&self, order: &'o [usize], index: usize) -> &'o [usize] {
        let lo = index * self.batch_size;
        &order[lo..(lo + self.batch_size).min(order.len())]
    }
}

impl<'a> Loader<'a> {
    /// A loader of `batch_size` examples per batch (packed rows when the dataset is packed),
    /// shuffled each epoch when `shuffle`, padding with `pad_id`. The last, smaller batch of an
    /// epoch is kept; see [`Loader::drop_last`].
    pub fn new(
        ds: &'a Dataset,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        pad_id: u32,
    ) -> Result<Self, DataError> {
        Ok(Loader { ds, walk: Epochs::new(ds.num_examples(), batch_size, shuffle, seed)?, pad_id })
    }

    /// Leaves out each epoch's last batch when it is smaller than the batch size (if the
    /// dataset has fewer examples than one batch, nothing is left).
    pub fn drop_last(mut self, drop: bool) -> Self {
        self.walk = self.walk.drop_last(drop);
        self
    }

    /// The configured batch size.
    pub fn batch_size(&self) -> usize {
        self.walk.batch_size
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.walk.batches_per_epoch()
    }

    /// `(epoch, batch within the epoch)` of the `step`-th batch of a run (0-based), for resuming
    /// from a global step count.
    pub fn locate(&self, step: usize) -> (usize, usize) {
        self.walk.locate(step)
    }

    /// The order examples are visited in `epoch`: a permutation of `0..num_examples()`, the
    /// identity without shuffling.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        self.walk.order(epoch)
    }

    /// The batches of `epoch`.
    pub fn epoch(&self, epoch: usize) -> Batches<'a> {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `start` on (exact resume).
    pub fn epoch_from(&self, epoch: usize, start: usize) -> Batches<'a> {
        Batches {
            loader: *self,
            order: self.order(epoch),
            next: start.min(self.batches_per_epoch()),
            end: self.batches_per_epoch(),
        }
    }

    /// Batch `index` of `epoch`, or `None` past the end of the epoch.
    pub fn batch(&self, epoch: usize, index: usize) -> Option<Batch> {
        (index < self.batches_per_epoch()).then(|| self.build(&self.order(epoch), index))
    }

    fn build(&self, order: &[usize], index: usize) -> Batch {
        let rows: Vec<&[Sample]> =
            self.walk.batch_of(order, index).iter().map(|&i| self.ds.example(i)).collect();
        if self.ds.is_packed() {
            packed_batch(&rows, self.ds.max_seq_len(), self.pad_id)
        } else {
            padded_batch(&rows, self.pad_id)
        }
    }
}

/// Unpacked: one sample per row, right-padded to the longest.
pub(crate) fn padded_batch(rows: &[&[Sample]], pad_id: u32) -> Batch {
    let seq = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    let n = rows.len() * seq;
    let (mut ids, mut labels) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut label_tokens = 0;
    for r in rows {
        let s = &r[0];
        ids.extend_from_slice(&s.ids);
        ids.resize(ids.len() + seq - s.len(), pad_id);
        labels.extend_from_slice(&s.labels);
        labels.resize(labels.len() + seq - s.len(), IGNORE_INDEX);
        label_tokens += s.num_label_tokens();
    }
    let positions = (0..rows.len()).flat_map(|_| 0..seq as u32).collect();
    Batch { ids, labels, positions, doc_ids: None, batch: rows.len(), seq, label_tokens }
}

/// Packed: each row is its samples back to back, then padding (its own document) to `seq`.
fn packed_batch(rows: &[&[Sample]], seq: usize, pad_id: u32) -> Batch {
    let n = rows.len() * seq;
    let mut b = Batch {
        ids: Vec::with_capacity(n),
        labels: Vec::with_capacity(n),
        positions: Vec::with_capacity(n),
        doc_ids: None,
        batch: rows.len(),
        seq,
        label_tokens: 0,
    };
    let mut doc_ids = Vec::with_capacity(n);
    for docs in rows {
        let mut used = 0;
        for (d, s) in docs.iter().enumerate() {
            b.ids.extend_from_slice(&s.ids);
            b.labels.extend_from_slice(&s.labels);
            b.positions.extend(0..s.len() as u32);
            doc_ids.resize(doc_ids.len() + s.len(), d as u32);
            b.label_tokens += s.num_label_tokens();
            used += s.len();
        }
        let pad = seq - used;
        b.ids.resize(b.ids.len() + pad, pad_id);
        b.labels.resize(b.labels.len() + pad, IGNORE_INDEX);
        b.positions.extend(0..pad as u32);
        doc_ids.resize(doc_ids.len() + pad, docs.len() as u32);
    }
    b.doc_ids = Some(doc_ids);
    b
}

/// The batches of one epoch, in order; see [`Loader::epoch`].
#[derive(Clone, Debug)]
pub struct Batches<'a> {
    loader: Loader<'a>,
    order: Vec<usize>,
    next: usize,
    end: usize,
}

impl Batches<'_> {
    /// The index within the epoch of the batch `next()` returns.
    pub fn position(&self) -> usize {
        self.next
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let b = self.loader.build(&self.order, self.next);
        self.next += 1;
        Some(b)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}

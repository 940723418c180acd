//! Byte-level BPE: a piece of text (as bytes) starts as one token per byte and adjacent tokens are
//! merged, lowest rank first (leftmost first among equal ranks), until no known merge is left.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::TokenizerError;

/// A small, fast, non-cryptographic hasher for the tokenizer's internal tables (keys are token ids
/// and short byte strings, never attacker-chosen in a way that matters here).
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher {
    hash: u64,
}

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash ^ word).wrapping_mul(K).rotate_left(26);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("chunk of 8")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// What merging a pair gives: its priority (lower first) and the new token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Merge {
    pub rank: u32,
    pub id: u32,
}

#[inline]
fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// The BPE model: byte tokens, merges and the whole-token lookup.
pub(crate) struct Bpe {
    /// The token of each single byte, if the vocabulary has it.
    byte_ids: [Option<u32>; 256],
    merges: FastMap<u64, Merge>,
    /// Every vocabulary token by its bytes.
    by_bytes: FastMap<Box<[u8]>, u32>,
    /// Emit a piece that is itself a token without merging (HF `ignore_merges`, tiktoken).
    ignore_merges: bool,
}

impl Bpe {
    /// Builds the model from the vocabulary (token bytes → id) and whether to look whole pieces up.
    pub(crate) fn new(by_bytes: FastMap<Box<[u8]>, u32>, ignore_merges: bool) -> Self {
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = by_bytes.get(&[b as u8][..]).copied();
        }
        Bpe { byte_ids, merges: FastMap::default(), by_bytes, ignore_merges }
    }

    /// Adds the merge of `a` then `b` into `id` with priority `rank`; an existing entry for the
    /// pair with a lower rank wins.
    pub(crate) fn add_merge(&mut self, a: u32, b: u32, rank: u32, id: u32) {
        let m = Merge { rank, id };
        self.merges
            .entry(pair_key(a, b))
            .and_modify(|old| {
                if rank < old.rank {
                    *old = m
                }
            })
            .or_insert(m);
    }

    /// Makes room for `n` more merges.
    pub(crate) fn reserve_merges(&mut self, n: usize) {
        self.merges.reserve(n);
    }

    /// The id of the vocabulary token with exactly these bytes.
    pub(crate) fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        self.by_bytes.get(bytes).copied()
    }

    /// Iterates the vocabulary as (bytes, id).
    pub(crate) fn vocab(&self) -> impl Iterator<Item = (&[u8], u32)> {
        self.by_bytes.iter().map(|(b, id)| (&b[..], *id))
    }

    /// Whether whole pieces that are tokens skip merging (HF `ignore_merges`).
    pub(crate) fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    /// Iterates the merges as (left id, right id, rank and result), in no particular order.
    pub(crate) fn merges(&self) -> impl Iterator<Item = (u32, u32, Merge)> + '_ {
        self.merges.iter().map(|(&k, &m)| ((k >> 32) as u32, k as u32, m))
    }

    /// Number of merges known.
    #[cfg(test)]
    pub(crate) fn merge_count(&self) -> usize {
        self.merges.len()
    }

    /// Encodes one pre-token, appending its ids to `out`.
    pub(crate) fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        if piece.is_empty() {
            return Ok(());
        }
        if self.ignore_merges || piece.len() == 1 {
            if let Some(id) = self.token_id(piece) {
                out.push(id);
                return Ok(());
            }
        }
        let mut ids = Vec::with_capacity(piece.len());
        for &b in piece {
            ids.push(self.byte_ids[b as usize].ok_or(TokenizerError::MissingByte { byte: b })?);
        }
        if ids.len() <= 48 {
            self.merge_small(&mut ids);
        } else {
            self.merge_large(&mut ids);
        }
        out.extend_from_slice(&ids);
        Ok(())
    }

    #[inline]
    fn merge_of(&self, a: u32, b: u32) -> Option<Merge> {
        self.merges.get(&pair_key(a, b)).copied()
    }

    /// Quadratic merging for short pieces: rescans for the best pair after each merge, which for a
    /// few dozen symbols beats the bookkeeping of a heap.
    fn merge_small(&self, ids: &mut Vec<u32>) {
        // ranks[i] is the merge of ids[i], ids[i + 1].
        let mut ranks: Vec<Option<Merge>> = ids.windows(2).map(|w| self.merge_of(w[0], w[1])).collect();
        loop {
            let mut best: Option<(usize, Merge)> = None;
            for (i, m) in ranks.iter().enumerate() {
                if let Some(m) = m {
                    if best.is_none_or(|(_, b)| m.rank < b.rank) {
                        best = Some((i, *m));
                    }
                }
            }
            let Some((i, m)) = best else { break };
            ids[i] = m.id;
            ids.remove(i + 1);
            ranks.remove(i);
            if i + 1 < ids.len() {
                ranks[i] = self.merge_of(ids[i], ids[i + 1]);
            }
            if i > 0 {
                ranks[i - 1] = self.merge_of(ids[i - 1], ids[i]);
            }
        }
    }

    /// Heap-driven merging for long pieces: O(n log n) over a linked list of symbols.
    fn merge_large(&self, ids: &mut Vec<u32>) {
        const NONE: usize = usize::MAX;
        let n = ids.len();
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
        let mut next: Vec<usize> = (0..n).map(|i| if i + 1 == n { NONE } else { i + 1 }).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(m) = self.merge_of(ids[i], ids[i + 1]) {
                heap.push(Reverse((m.rank, i, m.id)));
            }
        }
        while let Some(Reverse((rank, pos, new_id))) = heap.pop() {
            if !alive[pos] || next[pos] == NONE {
                continue;
            }
            let right = next[pos];
            // Skip entries made stale by an earlier merge at either side.
            match self.merge_of(ids[pos], ids[right]) {
                Some(m) if m.rank == rank && m.id == new_id => {}
                _ => continue,
            }
            ids[pos] = new_id;
            alive[right] = false;
            next[pos] = next[right];
            if next[pos] != NONE {
                prev[next[pos]] = pos;
            }
            if prev[pos] != NONE {
                let p = prev[pos];
                if let Some(m) = self.merge_of(ids[p], ids[pos]) {
                    heap.push(Reverse((m.rank, p, m.id)));
                }
            }
            if next[pos] != NONE {
                if let Some(m) = self.merge_of(ids[pos], ids[next[pos]]) {
                    heap.push(Reverse((m.rank, pos, m.id)));
                }
            }
        }
        let mut w = 0;
        for r in 0..n {
            if alive[r] {
                ids[w] = ids[r];
                w += 1;
            }
        }
        ids.truncate(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: bytes a, b, c and merges ab (0), abc (1), bc (2), aa (3).
    fn toy() -> Bpe {
        let mut vocab: FastMap<Box<[u8]>, u32> = FastMap::default();
        for (i, t) in ["a", "b", "c", "ab", "abc", "bc", "aa"].iter().enumerate() {
            vocab.insert(t.as_bytes().into(), i as u32);
        }
        let mut bpe = Bpe::new(vocab, false);
        bpe.add_merge(0, 1, 0, 3);
        bpe.add_merge(3, 2, 1, 4);
        bpe.add_merge(1, 2, 2, 5);
        bpe.add_merge(0, 0, 3, 6);
        bpe
    }

    fn both(bpe: &Bpe, s: &str) -> Vec<u32> {
        let mut a: Vec<u32> = s.bytes().map(|b| bpe.byte_ids[b as usize].unwrap()).collect();
        let mut b = a.clone();
        bpe.merge_small(&mut a);
        bpe.merge_large(&mut b);
        assert_eq!(a, b, "small and large merging disagree on {s:?}");
        a
    }

    #[test]
    fn merges_by_rank_then_leftmost() {
        let bpe = toy();
        assert_eq!(bpe.merge_count(), 4);
        assert_eq!(both(&bpe, "abc"), [4]);
        assert_eq!(both(&bpe, "bc"), [5]);
        // "aab": ab (rank 0) beats aa (rank 3).
        assert_eq!(both(&bpe, "aab"), [0, 3]);
        // "aaaa": leftmost aa first, twice.
        assert_eq!(both(&bpe, "aaaa"), [6, 6]);
        assert_eq!(both(&bpe, "aaa"), [6, 0]);
        let long: String = "abcaab".repeat(20);
        let ids = both(&bpe, &long);
        assert_eq!(ids.len(), 60);
        let mut out = Vec::new();
        bpe.encode_piece(long.as_bytes(), &mut out).unwrap();
        assert_eq!(out, ids);
    }

    #[test]
    fn missing_byte_is_an_error() {
        let bpe = toy();
        let mut out = Vec::new();
        let err = bpe.encode_piece(b"abz", &mut out).unwrap_err();
        assert!(err.to_string().contains("0x7a"), "{err}");
    }
}

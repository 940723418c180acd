//! Packing and the loader: full rows, document ids, position resets, no label across documents,
//! no token lost; deterministic per-epoch shuffling and exact resume.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use afinar_data::{Dataset, DatasetKind, Loader, Sample, IGNORE_INDEX};
use common::*;

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/bilingual_instruct.jsonl")
}

fn packed(max_seq_len: usize) -> Dataset {
    let mut sp = spec(DatasetKind::Instruct, &shipped());
    sp.max_seq_len = max_seq_len;
    sp.packed = true;
    load(&sp, smollm2())
}

const PAD: u32 = 7;

#[test]
fn packed_rows_are_full_and_documents_stay_apart() {
    let ds = packed(256);
    let packs = ds.packs().unwrap();
    assert!(packs.len() < ds.len() / 2, "{} packs for {} samples", packs.len(), ds.len());
    // Packs tile the samples in order.
    assert_eq!(packs[0].start, 0);
    assert_eq!(packs.last().unwrap().end, ds.len());
    assert!(packs.windows(2).all(|w| w[0].end == w[1].start));

    let loader = Loader::new(&ds, 3, false, 0, PAD).unwrap();
    let (mut all_ids, mut label_tokens, mut rows) = (Vec::new(), 0, 0);
    for b in loader.epoch(0) {
        assert_eq!(b.seq, 256);
        assert_eq!(b.ids.len(), b.batch * b.seq);
        assert_eq!(b.labels.len(), b.ids.len());
        assert_eq!(b.positions.len(), b.ids.len());
        let doc = b.doc_ids.as_ref().unwrap();
        assert_eq!(b.label_tokens, b.labels.iter().filter(|&&l| l != IGNORE_INDEX).count());
        label_tokens += b.label_tokens;
        for r in 0..b.batch {
            let row = r * b.seq..(r + 1) * b.seq;
            let (ids, labels, pos, doc) =
                (&b.ids[row.clone()], &b.labels[row.clone()], &b.positions[row.clone()], &doc[row]);
            let samples = ds.example(rows);
            rows += 1;
            let used: usize = samples.iter().map(Sample::len).sum();
            assert!(used <= 256);
            assert_eq!(doc[0], 0);
            assert_eq!(pos[0], 0);
            for t in 1..b.seq {
                if doc[t] == doc[t - 1] {
                    assert_eq!(pos[t], pos[t - 1] + 1, "positions count up within a document");
                } else {
                    assert_eq!(doc[t], doc[t - 1] + 1, "document ids go 0, 1, 2, ...");
                    assert_eq!(pos[t], 0, "positions restart at each document");
                    assert_eq!(labels[t - 1], IGNORE_INDEX, "no label across documents");
                }
            }
            // Padding: pad ids, no labels, its own document.
            assert!(ids[used..].iter().all(|&i| i == PAD));
            assert!(labels[used..].iter().all(|&l| l == IGNORE_INDEX));
            if used < 256 {
                assert_eq!(doc[used], samples.len() as u32);
            }
            assert_eq!(doc[used - 1] as usize, samples.len() - 1);
            // Labels are the samples' own labels.
            let want: Vec<i32> = samples.iter().flat_map(|s| s.labels.iter().copied()).collect();
            assert_eq!(&labels[..used], &want[..]);
            all_ids.extend_from_slice(&ids[..used]);
        }
    }
    assert_eq!(rows, packs.len());
    // No token lost or duplicated.
    let want: Vec<u32> = ds.samples().iter().flat_map(|s| s.ids.iter().copied()).collect();
    assert_eq!(all_ids, want);
    assert_eq!(label_tokens, ds.num_label_tokens());
}

#[test]
fn unpacked_batches_pad_to_the_longest_sample() {
    let mut sp = spec(DatasetKind::Instruct, &shipped());
    sp.max_seq_len = 512;
    let ds = load(&sp, llama3());
    let loader = Loader::new(&ds, 5, true, 3, PAD).unwrap();
    let order = loader.order(0);
    for (k, b) in loader.epoch(0).enumerate() {
        assert!(b.doc_ids.is_none());
        let samples: Vec<&Sample> =
            order[k * 5..(k * 5 + 5).min(order.len())].iter().map(|&i| ds.sample(i)).collect();
        assert_eq!(b.batch, samples.len());
        assert_eq!(b.seq, samples.iter().map(|s| s.len()).max().unwrap());
        for (r, s) in samples.iter().enumerate() {
            let row = r * b.seq..(r + 1) * b.seq;
            assert_eq!(&b.ids[row.clone()][..s.len()], &s.ids[..]);
            assert!(b.ids[row.clone()][s.len()..].iter().all(|&i| i == PAD));
            assert_eq!(&b.labels[row.clone()][..s.len()], &s.labels[..]);
            assert!(b.labels[row.clone()][s.len()..].iter().all(|&l| l == IGNORE_INDEX));
            assert!(b.positions[row].iter().copied().eq(0..b.seq as u32));
        }
        assert_eq!(b.label_tokens, samples.iter().map(|s| s.num_label_tokens()).sum::<usize>());
    }
}

fn small(n: usize) -> Dataset {
    let samples = (0..n as u32).map(|i| Sample::from_mask(vec![i, i + 1000], vec![true, true], 8)).collect();
    Dataset::from_samples(samples, 8, false).unwrap()
}

#[test]
fn shuffling_is_a_seeded_permutation_per_epoch() {
    let ds = small(100);
    let a = Loader::new(&ds, 8, true, 42, 0).unwrap();
    let b = Loader::new(&ds, 8, true, 42, 0).unwrap();
    let c = Loader::new(&ds, 8, true, 43, 0).unwrap();
    for e in 0..3 {
        let o = a.order(e);
        assert_eq!(o.iter().copied().collect::<BTreeSet<_>>().len(), 100, "a permutation");
        assert_eq!(o.len(), 100);
        assert_eq!(o, b.order(e), "same seed and epoch, same order");
        assert_ne!(o, c.order(e), "another seed, another order");
        assert_ne!(o, a.order(e + 1), "another epoch, another order");
        assert_ne!(o, (0..100).collect::<Vec<_>>());
    }
    // The order is fixed by this crate's own PRNG: guard it against accidental changes.
    let ten = small(10);
    let l = Loader::new(&ten, 1, true, 42, 0).unwrap();
    assert_eq!(l.order(0), GOLDEN_SEED42_EPOCH0);
    // Without shuffling: file order every epoch.
    let plain = Loader::new(&ds, 8, false, 42, 0).unwrap();
    assert_eq!(plain.order(5), (0..100).collect::<Vec<_>>());
    // Every example once per epoch, across the batches.
    let seen: Vec<u32> =
        a.epoch(1).flat_map(|bt| bt.ids.chunks(bt.seq).map(|r| r[0]).collect::<Vec<_>>()).collect();
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>().len(), 100);
    assert_eq!(seen, a.order(1).iter().map(|&i| i as u32).collect::<Vec<_>>());
}

/// Computed independently with a Python transcription of splitmix64 + xoshiro256** + Lemire + Fisher–Yates.
const GOLDEN_SEED42_EPOCH0: [usize; 10] = [2, 0, 3, 9, 6, 4, 8, 5, 1, 7];

#[test]
fn resume_reproduces_the_remaining_batches() {
    let ds = packed(128);
    let loader = Loader::new(&ds, 2, true, 1234, PAD).unwrap();
    let n = loader.batches_per_epoch();
    assert_eq!(n, ds.num_examples().div_ceil(2));
    let full: Vec<_> = loader.epoch(2).collect();
    assert_eq!(full.len(), n);
    for k in [0, 1, n / 2, n - 1, n] {
        let resumed: Vec<_> = loader.epoch_from(2, k).collect();
        assert_eq!(resumed, full[k..], "resume at batch {k}");
        assert_eq!(loader.batch(2, k), full.get(k).cloned());
    }
    assert_eq!(loader.locate(n * 3 + 1), (3, 1));
    // drop_last leaves out the short final batch.
    let odd = small(7);
    let l = Loader::new(&odd, 3, true, 0, 0).unwrap();
    assert_eq!(l.batches_per_epoch(), 3);
    assert_eq!(l.epoch(0).last().unwrap().batch, 1);
    let l = l.drop_last(true);
    assert_eq!(l.batches_per_epoch(), 2);
    assert!(l.epoch(0).all(|b| b.batch == 3));
}

//! afinar datasets: file formats, prompt templates, loss masking, packing and batching.
//!
//! A [`DatasetSpec`] names a file (JSON, JSONL, CSV or Parquet), what its rows hold
//! ([`DatasetKind`]: Alpaca-style instructions, ShareGPT/OpenAI chats, plain text) and which
//! tokens carry loss ([`TrainOn`]). [`Dataset::load`] reads and checks every row (errors name the
//! file, row and column), renders it (the Alpaca prompt, or the tokenizer's chat template split
//! message by message), tokenizes it, builds shifted labels (-100 where there is no loss),
//! truncates to `max_seq_len` and optionally packs samples into full rows. A [`Loader`] then
//! serves [`Batch`]es, shuffled per epoch from `(seed, epoch)` and resumable at any batch.
//!
//! Preference data (`prompt` / `chosen` / `rejected`, for DPO-style training and evaluation)
//! loads with [`PreferenceDataset::load`] into [`PreferencePair`]s and batches with a
//! [`PreferenceLoader`]; its layouts, encoding and truncation rules are on
//! [`PreferenceDataset`]'s module (`preference.rs`) and in `docs/`.
//!
//! Prompt data (a `prompt` string or message list, with other columns kept for rewards, for
//! GRPO) loads with [`PromptDataset::load`] into [`PromptRow`]s, served by a [`PromptLoader`];
//! its rules are on its module (`prompt.rs`).
//!
//! ```no_run
//! use afinar_data::{Dataset, DatasetKind, DatasetSpec, Loader};
//! use afinar_tokenizer::Tokenizer;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tok = Tokenizer::from_file(std::path::Path::new("tokenizer.json"))?;
//! let mut spec = DatasetSpec::new(DatasetKind::Instruct, "data/bilingual_instruct.jsonl");
//! spec.max_seq_len = 512;
//! spec.packed = true;
//! let ds = Dataset::load(&spec, &tok)?;
//! let loader = Loader::new(&ds, 4, true, 42, tok.eos_id().unwrap_or(0))?;
//! for batch in loader.epoch(0) {
//!     assert_eq!(batch.ids.len(), batch.batch * batch.seq);
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod dataset;
mod encode;
mod error;
mod formats;
mod loader;
#[cfg(feature = "parquet")]
mod parquet_rows;
mod preference;
mod prompt;
mod records;
pub mod rng;
mod spec;

pub use dataset::{Dataset, DatasetStats, PromptFormat, Sample};
pub use encode::{alpaca_prompt, render_chatml};
pub use error::{DataError, RowLoc};
pub use loader::{Batch, Batches, Loader};
pub use preference::{PreferenceBatch, PreferenceDataset, PreferenceLoader, PreferencePair};
pub use prompt::{PromptDataset, PromptLoader, PromptRow};
pub use spec::{
    ConversationStyle, DatasetKind, DatasetSpec, FileFormat, InstructTemplate, LongRows, TrainOn,
};

/// The label of a position without loss (PyTorch's `CrossEntropyLoss` `ignore_index`), the
/// value the engine's losses skip.
pub use afinar_formats::IGNORE_INDEX;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, first: u32) -> Sample {
        let ids: Vec<u32> = (first..first + n as u32).collect();
        Sample::from_mask(ids, vec![true; n], 64)
    }

    #[test]
    fn labels_are_shifted_within_a_sample() {
        let s = Sample::from_mask(vec![1, 2, 3, 4], vec![false, false, true, true], 8);
        assert_eq!(s.labels, [IGNORE_INDEX, 3, 4, IGNORE_INDEX]);
        let t = Sample::from_mask(vec![1, 2, 3, 4], vec![true; 4], 3);
        assert!(t.truncated);
        assert_eq!((t.ids.as_slice(), t.labels.as_slice()), (&[1, 2, 3][..], &[2, 3, IGNORE_INDEX][..]));
    }

    #[test]
    fn greedy_packing_keeps_order_and_fills_rows() {
        let samples = vec![sample(3, 0), sample(4, 10), sample(2, 20), sample(5, 30)];
        let ds = Dataset::from_samples(samples, 8, true).unwrap();
        assert_eq!(ds.packs().unwrap(), &[0..2, 2..4]);
        let loader = Loader::new(&ds, 2, false, 0, 999).unwrap();
        let b = loader.batch(0, 0).unwrap();
        assert_eq!((b.batch, b.seq), (2, 8));
        assert_eq!(&b.ids[..8], &[0, 1, 2, 10, 11, 12, 13, 999]);
        assert_eq!(&b.positions[..8], &[0, 1, 2, 0, 1, 2, 3, 0]);
        assert_eq!(&b.doc_ids.as_ref().unwrap()[..8], &[0, 0, 0, 1, 1, 1, 1, 2]);
        assert_eq!(&b.labels[..8], &[1, 2, -100, 11, 12, 13, -100, -100]);
        assert_eq!(b.label_tokens, 2 + 3 + 1 + 4);
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(Dataset::from_samples(vec![sample(3, 0)], 0, false).is_err());
        assert!(Dataset::from_samples(vec![sample(9, 0)], 8, false).is_err());
        let ds = Dataset::from_samples(vec![sample(3, 0)], 8, false).unwrap();
        assert!(Loader::new(&ds, 0, false, 0, 0).is_err());
        let mut spec = DatasetSpec::new(DatasetKind::Text, "x.jsonl");
        spec.column_map.insert("output".into(), "y".into());
        let e = spec.validate().unwrap_err().to_string();
        assert!(e.contains("column_map key \"output\""), "{e}");
        assert_eq!("sharegpt".parse::<ConversationStyle>().unwrap(), ConversationStyle::ShareGpt);
        assert_eq!("train_on_last".parse::<TrainOn>().unwrap(), TrainOn::Last);
        assert!("bogus".parse::<TrainOn>().is_err());
        assert_eq!(FileFormat::Jsonl.to_string(), "jsonl");
    }
}

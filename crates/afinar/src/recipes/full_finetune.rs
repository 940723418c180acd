//! `full_finetune`: every weight is trained, with the shared SFT loop ([`run`](mod@super::run)).

use super::registry::RecipeSpec;
use super::run::SFT_DATASET_KINDS;
use crate::config::builtin_config;

/// The recipe's registry entry.
pub static SPEC: RecipeSpec = RecipeSpec {
    name: "full_finetune",
    description: "Supervised fine-tuning of every weight",
    sections: &[],
    keys: &[],
    dataset_kinds: SFT_DATASET_KINDS,
    configs: &[
        builtin_config!("smollm2_135m_full", "full_finetune", "SmolLM2-135M-Instruct full fine-tune on the bilingual dataset"),
        builtin_config!("smollm2_360m_full", "full_finetune", "SmolLM2-360M-Instruct full fine-tune; model folder from $SMOLLM2_DIR"),
        builtin_config!("llama3_2_1b_full", "full_finetune", "Llama-3.2-1B-Instruct full fine-tune; model from $LLAMA_DIR"),
        builtin_config!("llama3_2_3b_full", "full_finetune", "Llama-3.2-3B-Instruct full fine-tune; model from $LLAMA_DIR"),
        builtin_config!("llama3_1_8b_full", "full_finetune", "Llama-3.1-8B-Instruct full fine-tune, activation checkpointing (~130 GB of RAM in fp32); model from $LLAMA_DIR"),
        builtin_config!("qwen3_0_6b_full", "full_finetune", "Qwen3-0.6B full fine-tune; model from $QWEN3_DIR"),
        builtin_config!("qwen3_1_7b_full", "full_finetune", "Qwen3-1.7B full fine-tune; model from $QWEN3_DIR"),
    ],
    check: None,
    run: super::run::run,
};

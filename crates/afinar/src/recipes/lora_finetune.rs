//! `lora_finetune`: low-rank adapters (optionally on an NF4-quantized base, QLoRA) trained on
//! frozen weights, with the shared SFT loop ([`run`](mod@super::run)). Its configs have the typed
//! [`LORA`] section.

use super::registry::RecipeSpec;
use super::run::SFT_DATASET_KINDS;
use crate::config::{builtin_config, LORA};

/// The recipe's registry entry.
pub static SPEC: RecipeSpec = RecipeSpec {
    name: "lora_finetune",
    description: "Supervised fine-tuning of LoRA adapters on frozen (or NF4-quantized) weights",
    sections: &[LORA],
    keys: &[],
    dataset_kinds: SFT_DATASET_KINDS,
    configs: &[
        builtin_config!("smollm2_135m_lora", "lora_finetune", "SmolLM2-135M-Instruct LoRA (rank 8, q/v) on the bilingual dataset: minutes on a CPU"),
        builtin_config!("smollm2_135m_qlora", "lora_finetune", "SmolLM2-135M-Instruct QLoRA (NF4 base, rank 8, all linear layers) on the bilingual dataset"),
        builtin_config!("smollm2_360m_lora", "lora_finetune", "SmolLM2-360M-Instruct LoRA (rank 8, q/v); model folder from $SMOLLM2_DIR"),
        builtin_config!("smollm2_360m_qlora", "lora_finetune", "SmolLM2-360M-Instruct QLoRA (NF4 base, rank 8, all linear layers); model folder from $SMOLLM2_DIR"),
        builtin_config!("llama3_2_1b_lora", "lora_finetune", "Llama-3.2-1B-Instruct LoRA (rank 64, all linear layers); model from $LLAMA_DIR"),
        builtin_config!("llama3_2_1b_qlora", "lora_finetune", "Llama-3.2-1B-Instruct QLoRA (NF4 base, rank 64, all linear layers); model from $LLAMA_DIR"),
        builtin_config!("llama3_2_3b_lora", "lora_finetune", "Llama-3.2-3B-Instruct LoRA (rank 64, all linear layers); model from $LLAMA_DIR"),
        builtin_config!("llama3_2_3b_qlora", "lora_finetune", "Llama-3.2-3B-Instruct QLoRA (NF4 base, rank 64, all linear layers); model from $LLAMA_DIR"),
        builtin_config!("llama3_1_8b_lora", "lora_finetune", "Llama-3.1-8B-Instruct LoRA (rank 8, attention + MLP), activation checkpointing; model from $LLAMA_DIR"),
        builtin_config!("llama3_1_8b_qlora", "lora_finetune", "Llama-3.1-8B-Instruct QLoRA (NF4 base, rank 8, attention + MLP), activation checkpointing; model from $LLAMA_DIR"),
        builtin_config!("qwen3_0_6b_lora", "lora_finetune", "Qwen3-0.6B LoRA (rank 64, all linear layers); model from $QWEN3_DIR"),
        builtin_config!("qwen3_0_6b_qlora", "lora_finetune", "Qwen3-0.6B QLoRA (NF4 base, rank 64, all linear layers); model from $QWEN3_DIR"),
        builtin_config!("qwen3_1_7b_lora", "lora_finetune", "Qwen3-1.7B LoRA (rank 64, all linear layers); model from $QWEN3_DIR"),
        builtin_config!("qwen3_1_7b_qlora", "lora_finetune", "Qwen3-1.7B QLoRA (NF4 base, rank 64, all linear layers); model from $QWEN3_DIR"),
        builtin_config!("qwen3_4b_lora", "lora_finetune", "Qwen3-4B LoRA (rank 64, all linear layers); model from $QWEN3_DIR"),
        builtin_config!("qwen3_4b_qlora", "lora_finetune", "Qwen3-4B QLoRA (NF4 base, rank 64, all linear layers); model from $QWEN3_DIR"),
        builtin_config!("qwen3_8b_lora", "lora_finetune", "Qwen3-8B LoRA (rank 8, attention + MLP), activation checkpointing; model from $QWEN3_DIR"),
        builtin_config!("qwen3_8b_qlora", "lora_finetune", "Qwen3-8B QLoRA (NF4 base, rank 8, attention + MLP), activation checkpointing; model from $QWEN3_DIR"),
    ],
    check: None,
    run: super::run::run,
};

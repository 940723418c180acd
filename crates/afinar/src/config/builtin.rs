//! The recipe configs shipped inside the binary (the YAML files of the repository's `configs/`).

use super::types::Recipe;

/// A config shipped with afinar.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinConfig {
    /// The name to give `afinar run --config`, `cp`, `cat`, `validate` (the file name without
    /// `.yaml`).
    pub name: &'static str,
    /// The recipe it is for.
    pub recipe: Recipe,
    /// One line for `afinar ls`.
    pub description: &'static str,
    /// The YAML text.
    pub yaml: &'static str,
}

impl BuiltinConfig {
    /// The file name, as shown in error messages: `built-in:NAME.yaml`.
    pub fn label(&self) -> String {
        format!("built-in:{}.yaml", self.name)
    }
}

macro_rules! builtin {
    ($name:literal, $recipe:ident, $desc:literal) => {
        BuiltinConfig {
            name: $name,
            recipe: Recipe::$recipe,
            description: $desc,
            yaml: include_str!(concat!("../../../../configs/", $name, ".yaml")),
        }
    };
}

/// Every built-in config, SmolLM2 first, then Llama by size.
pub const BUILTIN_CONFIGS: &[BuiltinConfig] = &[
    builtin!("smollm2_135m_lora", LoraFinetune, "SmolLM2-135M-Instruct LoRA (rank 8, q/v) on the bilingual dataset: minutes on a CPU"),
    builtin!("smollm2_135m_qlora", LoraFinetune, "SmolLM2-135M-Instruct QLoRA (NF4 base, rank 8, all linear layers) on the bilingual dataset"),
    builtin!("smollm2_135m_full", FullFinetune, "SmolLM2-135M-Instruct full fine-tune on the bilingual dataset"),
    builtin!("smollm2_360m_lora", LoraFinetune, "SmolLM2-360M-Instruct LoRA (rank 8, q/v); model folder from $SMOLLM2_DIR"),
    builtin!("smollm2_360m_qlora", LoraFinetune, "SmolLM2-360M-Instruct QLoRA (NF4 base, rank 8, all linear layers); model folder from $SMOLLM2_DIR"),
    builtin!("smollm2_360m_full", FullFinetune, "SmolLM2-360M-Instruct full fine-tune; model folder from $SMOLLM2_DIR"),
    builtin!("llama3_2_1b_lora", LoraFinetune, "Llama-3.2-1B-Instruct LoRA (rank 64, all linear layers); model from $LLAMA_DIR"),
    builtin!("llama3_2_1b_qlora", LoraFinetune, "Llama-3.2-1B-Instruct QLoRA (NF4 base, rank 64, all linear layers); model from $LLAMA_DIR"),
    builtin!("llama3_2_1b_full", FullFinetune, "Llama-3.2-1B-Instruct full fine-tune; model from $LLAMA_DIR"),
    builtin!("llama3_2_3b_lora", LoraFinetune, "Llama-3.2-3B-Instruct LoRA (rank 64, all linear layers); model from $LLAMA_DIR"),
    builtin!("llama3_2_3b_qlora", LoraFinetune, "Llama-3.2-3B-Instruct QLoRA (NF4 base, rank 64, all linear layers); model from $LLAMA_DIR"),
    builtin!("llama3_2_3b_full", FullFinetune, "Llama-3.2-3B-Instruct full fine-tune; model from $LLAMA_DIR"),
    builtin!("llama3_1_8b_lora", LoraFinetune, "Llama-3.1-8B-Instruct LoRA (rank 8, attention + MLP), activation checkpointing; model from $LLAMA_DIR"),
    builtin!("llama3_1_8b_qlora", LoraFinetune, "Llama-3.1-8B-Instruct QLoRA (NF4 base, rank 8, attention + MLP), activation checkpointing; model from $LLAMA_DIR"),
    builtin!("llama3_1_8b_full", FullFinetune, "Llama-3.1-8B-Instruct full fine-tune, activation checkpointing (~130 GB of RAM in fp32); model from $LLAMA_DIR"),
];

/// The built-in config of this name (`NAME`, without `.yaml`).
pub fn builtin(name: &str) -> Option<&'static BuiltinConfig> {
    BUILTIN_CONFIGS.iter().find(|c| c.name == name)
}

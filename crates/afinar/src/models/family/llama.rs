//! Llama-3.x and SmolLM2: the `llama` architecture of transformers and llama.cpp.

use super::FamilySpec;

/// The Llama family: no norm on queries and keys; llama.cpp's GGUF files store the Q and K
/// rows permuted for its interleaved RoPE.
pub const SPEC: FamilySpec = FamilySpec {
    name: "llama",
    models: "Llama-3.x, SmolLM2",
    hf_model_type: "llama",
    hf_architecture: "LlamaForCausalLM",
    gguf_arch: "llama",
    qk_norm: false,
    gguf_permutes_qk: true,
    default_rope_theta: 10_000.0,
    default_norm_eps: 1e-5,
    default_head_dim: None,
};

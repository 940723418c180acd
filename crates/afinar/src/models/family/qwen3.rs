//! Qwen3 (dense, 0.6B to 32B): the `qwen3` architecture of transformers and llama.cpp.

use super::FamilySpec;

/// The Qwen3 family: a per-head RMSNorm on queries and keys (`q_norm`, `k_norm`, size
/// `head_dim`) after the projections and before RoPE, no attention bias, `head_dim` set
/// explicitly (often ≠ `hidden_size / heads`). llama.cpp runs it with NeoX (half-split) RoPE, so
/// its GGUF files keep Hugging Face's Q/K row order (convert_hf_to_gguf.py's `Qwen2Model`, which
/// `Qwen3Model` extends, does not permute).
pub const SPEC: FamilySpec = FamilySpec {
    name: "qwen3",
    models: "Qwen3",
    hf_model_type: "qwen3",
    hf_architecture: "Qwen3ForCausalLM",
    gguf_arch: "qwen3",
    qk_norm: true,
    gguf_permutes_qk: false,
    default_rope_theta: 10_000.0,
    default_norm_eps: 1e-6,
    default_head_dim: Some(128),
};

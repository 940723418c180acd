//! Model builders: each Llama-3-family size as a [`LlamaConfig`], with the numbers of
//! `../shared/reference/llama3.md` (Meta's model cards and `config.json` files).

use afinar_engine::RopeScaling;

use super::config::LlamaConfig;
use super::family::Family;

/// Llama-3.1+ RoPE scaling with the given factor (8 for 3.1/3.3, 32 for 3.2).
fn llama3_scaling(factor: f64) -> Option<RopeScaling> {
    Some(RopeScaling {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    })
}

/// The fields every Llama-3 model shares; callers set the size.
#[allow(clippy::too_many_arguments)]
fn llama3(
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    ffn_dim: usize,
    head_dim: usize,
    max_seq_len: usize,
    rope_scaling: Option<RopeScaling>,
    tie_embeddings: bool,
) -> LlamaConfig {
    LlamaConfig {
        family: Default::default(),
        vocab_size: 128_256,
        dim,
        n_layers,
        n_heads,
        n_kv_heads: 8,
        head_dim,
        ffn_dim,
        norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling,
        max_seq_len,
        tie_embeddings,
    }
}

/// SmolLM2: Llama architecture, plain RoPE with base 100,000, tied embeddings, 49,152 tokens.
fn smollm2(dim: usize, n_layers: usize, n_heads: usize, n_kv_heads: usize, ffn_dim: usize) -> LlamaConfig {
    LlamaConfig {
        family: Default::default(),
        vocab_size: 49_152,
        dim,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim: dim / n_heads,
        ffn_dim,
        norm_eps: 1e-5,
        rope_theta: 100_000.0,
        rope_scaling: None,
        max_seq_len: 8192,
        tie_embeddings: true,
    }
}

/// Qwen3 (dense): 151,936 tokens, RoPE base 1,000,000, RMSNorm eps 1e-6, context 40,960,
/// head_dim 128 whatever the width, 8 key/value heads (the models' `config.json` files).
fn qwen3(dim: usize, n_layers: usize, n_heads: usize, ffn_dim: usize, tie_embeddings: bool) -> LlamaConfig {
    LlamaConfig {
        family: Family::Qwen3,
        vocab_size: 151_936,
        dim,
        n_layers,
        n_heads,
        n_kv_heads: 8,
        head_dim: 128,
        ffn_dim,
        norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_scaling: None,
        max_seq_len: 40_960,
        tie_embeddings,
    }
}

/// Names accepted by [`preset`], in display order.
pub const PRESETS: &[&str] = &[
    "llama3-8b",
    "llama3-70b",
    "llama3.1-8b",
    "llama3.1-70b",
    "llama3.1-405b",
    "llama3.2-1b",
    "llama3.2-3b",
    "llama3.3-70b",
    "smollm2-135m",
    "smollm2-360m",
    "qwen3-0.6b",
    "qwen3-1.7b",
    "qwen3-4b",
    "qwen3-8b",
];

/// The configuration of a named model size, or `None` for an unknown name.
pub fn preset(name: &str) -> Option<LlamaConfig> {
    let long = 131_072;
    Some(match name {
        "llama3-8b" => llama3(4096, 32, 32, 14336, 128, 8192, None, false),
        "llama3-70b" => llama3(8192, 80, 64, 28672, 128, 8192, None, false),
        "llama3.1-8b" => llama3(4096, 32, 32, 14336, 128, long, llama3_scaling(8.0), false),
        "llama3.1-70b" | "llama3.3-70b" => llama3(8192, 80, 64, 28672, 128, long, llama3_scaling(8.0), false),
        "llama3.1-405b" => llama3(16384, 126, 128, 53248, 128, long, llama3_scaling(8.0), false),
        "llama3.2-1b" => llama3(2048, 16, 32, 8192, 64, long, llama3_scaling(32.0), true),
        "llama3.2-3b" => llama3(3072, 28, 24, 8192, 128, long, llama3_scaling(32.0), true),
        "smollm2-135m" => smollm2(576, 30, 9, 3, 1536),
        "smollm2-360m" => smollm2(960, 32, 15, 5, 2560),
        "qwen3-0.6b" => qwen3(1024, 28, 16, 3072, true),
        "qwen3-1.7b" => qwen3(2048, 28, 16, 6144, true),
        "qwen3-4b" => qwen3(2560, 36, 32, 9728, true),
        "qwen3-8b" => qwen3(4096, 36, 32, 12288, false),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter counts of the published models (from their model cards), as a check on the
    /// shape table: 8B ≈ 8.03e9, 1B ≈ 1.24e9, 3B ≈ 3.21e9, 70B ≈ 70.6e9, SmolLM2-135M ≈ 134.5e6.
    #[test]
    fn parameter_counts_match_model_cards() {
        let approx = |name: &str, billions: f64| {
            let n = preset(name).unwrap().num_params() as f64 / 1e9;
            assert!((n - billions).abs() / billions < 0.01, "{name}: {n}B vs {billions}B");
        };
        approx("llama3-8b", 8.03);
        approx("llama3.1-8b", 8.03);
        approx("llama3.2-1b", 1.236);
        approx("llama3.2-3b", 3.213);
        approx("llama3-70b", 70.55);
        approx("smollm2-135m", 0.1345);
        approx("smollm2-360m", 0.3618);
        // Qwen3 model cards (rounded to 0.1B): 0.6B, 1.7B, 4.0B, 8.2B.
        approx("qwen3-0.6b", 0.6);
        approx("qwen3-4b", 4.0);
        approx("qwen3-8b", 8.2);
        let n = preset("qwen3-1.7b").unwrap().num_params() as f64 / 1e9;
        assert!((n - 1.7).abs() < 0.05, "qwen3-1.7b: {n}B vs 1.7B (±0.05, the card's rounding)");
    }

    #[test]
    fn every_listed_preset_exists_and_is_valid() {
        for name in PRESETS {
            let cfg = preset(name).unwrap();
            cfg.validate(std::path::Path::new(name)).unwrap();
        }
        assert!(preset("llama4").is_none());
    }
}

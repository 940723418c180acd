"""Writes a random Llama-architecture Hugging Face folder for the GPU generation and evaluation
checks of `scripts/gpu-check.sh`: SmolLM2-135M's shape with the Llama-3 vocabulary (so the
Llama-3 `tokenizer.json` given on the command line fits), bf16 safetensors, seeded.

    python3 scripts/bench/gpu_random_model.py TOKENIZER_JSON OUT_DIR
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    tokenizer, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128256,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(tokenizer, out / "tokenizer.json")
    print(out)


if __name__ == "__main__":
    main()

"""HF transformers + PEFT on one GPU: the peer of afinar's CUDA fine-tuning benchmark.

Same work as `scripts/gpu-check.sh` gives afinar: a Llama-3.2-1B-shaped model with random
weights in bf16, sdpa attention, batch × seq random tokens, LoRA (rank 64, alpha 128, on q, v, o,
gate, up, down; adapters in f32, PEFT's default upcast) or full fine-tuning (f32 weights and
AdamW state, products in bf16 under `torch.autocast`, as HF Trainer's `bf16=True` does), AdamW
lr 3e-4. Prints one JSON line per mode: tokens/s over the timed steps (label
tokens, as torchtune counts them: seq − 1 per row) and torch.cuda.max_memory_allocated.
"""

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def llama32_1b():
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        attn_implementation="sdpa",
        torch_dtype=torch.bfloat16,
    )


def llama31_8b():
    c = llama32_1b()
    c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.head_dim = 4096, 14336, 32, 128
    c.rope_scaling = dict(c.rope_scaling, factor=8.0)
    c.tie_word_embeddings = False
    return c


def run(mode, batch, seq, steps, warmup, compile_model, shape="1b", checkpointing=False):
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    config = llama31_8b() if shape == "8b" else llama32_1b()
    if mode == "lora":
        torch.set_default_dtype(torch.bfloat16)  # build the frozen model in bf16 directly
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model = model.to(torch.bfloat16) if mode == "lora" else model
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=64,
            lora_alpha=128,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
        model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01, fused=True)
    step_fn = model
    if compile_model:
        step_fn = torch.compile(model)
    ids = torch.randint(0, 128256, (batch, seq), device="cuda")
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "full"):
            loss = step_fn(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    tokens = batch * (seq - 1)
    tps = tokens * len(times) / sum(times)
    return {
        "framework": "hf+peft" + (" compiled" if compile_model else ""),
        "mode": mode,
        "shape": f"{shape} b{batch}x{seq}" + (" ckpt" if checkpointing else ""),
        "tokens_per_sec": tps,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss": float(loss),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="lora full")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--shape", choices=["1b", "8b"], default="1b")
    ap.add_argument("--checkpointing", action="store_true")
    a = ap.parse_args()
    for mode in a.modes.split():
        r = run(mode, a.batch, a.seq, a.steps, a.warmup, a.compile, a.shape, a.checkpointing)
        print(json.dumps(r), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

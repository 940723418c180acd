"""transformers (+ PEFT) side of scripts/bench/finetune.sh: LoRA or full fine-tuning steps on the
fixed rows written by finetune_data.py, on the CPU, timed step by step (run with the reference
venv).

    python hf_finetune.py OUT_DIR --mode lora|full [--steps 6] [--batch 4] [--threads 2]

Each step: forward with labels = input ids (the model shifts them: seq - 1 label tokens per row),
backward, gradient clipping at 1.0, AdamW (lr 3e-4, weight decay 0.01), zero_grad. LoRA: rank 8,
alpha 16, dropout 0, on q_proj and v_proj (PEFT's default init). Prints one JSON line per step
(loss, label tokens, seconds, tokens/s, peak RSS so far).
"""

import argparse
import json
import resource
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--mode", choices=["lora", "full"], required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--targets", default="q_proj,v_proj")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(f"{a.out}/model", dtype=torch.float32)
    if a.mode == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=a.targets.split(","),
            task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    rows = torch.tensor(json.load(open(f"{a.out}/rows.json")), dtype=torch.long)
    assert len(rows) >= a.steps * a.batch, "not enough rows for the steps asked"
    print(json.dumps({"trainable_params": sum(p.numel() for p in params),
                      "attn_implementation": model.config._attn_implementation}), flush=True)
    for step in range(a.steps):
        x = rows[step * a.batch:(step + 1) * a.batch]
        t0 = time.perf_counter()
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        secs = time.perf_counter() - t0
        labels = int(x[:, 1:].numel())
        print(json.dumps({
            "step": step + 1, "loss": out.loss.item(), "label_tokens": labels, "secs": secs,
            "tokens_per_sec": labels / secs,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        }), flush=True)


if __name__ == "__main__":
    main()

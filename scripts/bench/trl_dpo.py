"""TRL side of scripts/bench/dpo.sh: TRL's DPOTrainer with a PEFT LoRA adapter on the pairs that
finetune_data.py --pairs wrote, on the CPU, timed step by step (run with the reference venv).

    python trl_dpo.py OUT_DIR [--steps 4] [--batch 4] [--threads 2] [--seq 512]

The same work as afinar's `dpo` recipe in dpo.sh: the f32 model of OUT_DIR/model; LoRA rank 8,
alpha 16, dropout 0 on q_proj and v_proj; sigmoid loss, beta 0.1; the reference = the model with
the adapter disabled, run on every step (precompute_ref_log_probs False); every sequence (prompt
+ chosen, prompt + rejected) cut to max_length `--seq` tokens (keep_start: the prompt whole, the
response's start); `--batch` pairs per step in file order; AdamW lr 3e-4, weight decay 0.01,
clipping 1.0; fp32 (TRL's DPOConfig defaults to bf16 and gradient checkpointing: both off here);
`--threads` torch threads. Prints one JSON line per optimizer step: its seconds (from the start
of the step to its end, as the Trainer's callbacks see it), the sequence tokens it ran (the
attention mask's ones: prompt + chosen and prompt + rejected of every pair), its loss and TRL's
logps/chosen.
"""

import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(f"{a.out}/model", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(f"{a.out}/model")
    data = load_dataset("json", data_files=f"{a.out}/prefs.jsonl", split="train")
    assert len(data) >= a.steps * a.batch, "not enough pairs for the steps asked"

    step_secs, step_tokens = {}, {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_secs[state.global_step] = time.perf_counter() - self.t0

        def on_log(self, args, state, control, logs=None, **kw):
            s = state.global_step
            if logs and "loss" in logs and s in step_secs:
                print(json.dumps({
                    "step": s, "loss": logs["loss"], "logps/chosen": logs.get("logps/chosen"),
                    "label_tokens": step_tokens.get(s), "secs": step_secs[s],
                    "tokens_per_sec": (step_tokens.get(s) or 0) / step_secs[s],
                }), flush=True)

    class Counting(DPOTrainer):
        """Counts the sequence tokens of every optimizer step (one micro-batch per step)."""

        def training_step(self, model, inputs, *args, **kw):
            step_tokens[self.state.global_step + 1] = int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kw)

    cfg = DPOConfig(
        output_dir=f"{a.out}/trl_dpo", per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        max_steps=a.steps, learning_rate=3e-4, weight_decay=0.01, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, report_to=[], save_strategy="no",
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, seed=0,
        dataloader_num_workers=0, train_sampling_strategy="sequential", beta=0.1, loss_type=["sigmoid"],
        max_length=a.seq, truncation_mode="keep_start", precompute_ref_log_probs=False,
        disable_dropout=True,
    )
    peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    trainer = Counting(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=peft,
                       callbacks=[Timer()])
    trainer.train()


if __name__ == "__main__":
    main()

"""TRL side of scripts/bench/grpo.sh: TRL's GRPOTrainer with a PEFT LoRA adapter on the
arithmetic prompts of data/grpo_arith/train.jsonl, on the CPU, timed step by step (run with the
reference venv).

    python trl_grpo.py OUT_DIR [--steps 4] [--prompts 4] [--generations 8] [--micro 2]
                       [--threads 2] [--max-completion 64] [--data data/grpo_arith/train.jsonl]
                       [--min-new-tokens 0]

The same work as afinar's `grpo` recipe with the shipped config smollm2_135m_grpo_lora in grpo.sh:
the f32 model of OUT_DIR/model (finetune_data.py); LoRA rank 16, alpha 32, dropout 0 on all seven
projections; per optimizer step `--prompts` prompts × `--generations` completions, sampled as one
generation batch and trained in `--micro` micro-batches (per_device_train_batch_size =
prompts × generations / micro, gradient_accumulation_steps = steps_per_generation = micro); the
prompts in file order (shuffle_dataset False); sampling with temperature 1, top_p 1, top_k 0, at
most `--max-completion` new tokens, ending at the tokenizer's EOS (<|im_end|>) only (TRL has no
stop strings); beta 0 (no reference model), loss_type dapo, epsilon 0.2, epsilon_high 0.28,
num_iterations 1, scale_rewards group; AdamW lr 2e-4 (the shipped config's), weight decay 0,
constant schedule, clipping 1.0; fp32 (GRPOConfig's bf16 and gradient checkpointing defaults
off); `--threads` torch threads. `--min-new-tokens N` (generation_kwargs min_new_tokens: EOS
suppressed before N tokens) is off by default, as afinar cannot ignore EOS.

The rewards are Python versions of the config's weighted set (0.7 numeric_match: the last number
of the completion equals the row's `answer`; 0.2 format: the config's regex; 0.1 language: the
English/Spanish stop-word vote of crates/afinar/src/rewards/lang.rs, shortened), cheap, as the
Rust ones.

Prints one JSON line per optimizer step: its seconds (from the start of the step, generation
included, to the end of the optimizer step, as the Trainer's callbacks see it), the completion
tokens it trained on (`label_tokens`: the completion masks' ones, EOS included, as afinar's
label_tokens), its loss, reward and completions/mean_length.
"""

import argparse
import json
import re
import time

import torch

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
FORMAT = re.compile(r"(?im)^\s*\**(?:answer|respuesta)\**\s*:\s*\**\s*-?\d+")
WORD = re.compile(r"[^\W\d_]+")
EN = set("""the and is are was were of to in it its that this with for on has have had he she they you we
what how many much there answer left more each so if be by from at an or his her their now after then plus
minus equals which will would can not but all one two three gives buys bought gets got apples does do did
let us our first add subtract times result number i""".split())
ES = set("""el la los las de del que y es en un una unos unas por con para al se su sus lo le les como pero
más mas hay tiene tienen son está están respuesta cuántos cuántas cuantos cuantas quedan entonces después
cada ahora él ella ellos también muy sin sobre entre menos igual da compra compró tenía tenemos primero
sumamos restamos resultado número manzanas uno dos tres si este esta hace eso nos yo sumar restar
veces""".split())


def text_of(c):
    """A completion's text (conversational completions are message lists)."""
    return c[-1]["content"] if isinstance(c, list) else c


def to_number(s):
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    else:
        s = s.replace(",", ".")
    try:
        return float(s)
    except ValueError:
        return None


def correct(completions, answer, **kw):
    out = []
    for c, a in zip(completions, answer):
        nums = NUMBER.findall(text_of(c))
        v = to_number(nums[-1]) if nums else None
        out.append(1.0 if v is not None and abs(v - float(a)) <= 1e-6 else 0.0)
    return out


def format_reward(completions, **kw):
    return [1.0 if FORMAT.search(text_of(c)) else 0.0 for c in completions]


format_reward.__name__ = "format"   # TRL's metric names: rewards/<name>/mean, as afinar's


def language(completions, lang, **kw):
    out = []
    for c, want in zip(completions, lang):
        t = text_of(c)
        es = sum(t.count(ch) for ch in "ñÑáéíóúÁÉÍÓÚ¿¡")
        en = 0
        for w in WORD.findall(t.lower()):
            e, s = w in EN, w in ES
            en += e and not s
            es += s and not e
        got = "en" if en > es else "es" if es > en else None
        out.append(1.0 if got is not None and got == want[:2].lower() else 0.0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-completion", type=int, default=64)
    ap.add_argument("--min-new-tokens", type=int, default=0)
    ap.add_argument("--data", default="data/grpo_arith/train.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(f"{a.out}/model", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(f"{a.out}/model")
    data = load_dataset("json", data_files=a.data, split="train")
    assert len(data) >= a.steps * a.prompts, "not enough prompts for the steps asked"
    completions = a.prompts * a.generations
    assert completions % a.micro == 0, "the completions of a step do not split into --micro micro-batches"

    step_secs, step_tokens = {}, {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_secs[state.global_step] = time.perf_counter() - self.t0

        def on_log(self, args, state, control, logs=None, **kw):
            s = state.global_step
            if logs and "loss" in logs and s in step_secs:
                toks = step_tokens.get(s) or 0
                print(json.dumps({
                    "step": s, "loss": logs["loss"], "reward": logs.get("reward"),
                    "completions/mean_length": logs.get("completions/mean_length"),
                    "completions/clipped_ratio": logs.get("completions/clipped_ratio"),
                    "label_tokens": toks, "secs": step_secs[s], "tokens_per_sec": toks / step_secs[s],
                }), flush=True)

    class Counting(GRPOTrainer):
        """Counts the completion tokens each optimizer step trains on (its micro-batches' masks)."""

        def _prepare_inputs(self, batch):
            out = super()._prepare_inputs(batch)
            if self.model.training:
                s = self.state.global_step + 1
                step_tokens[s] = step_tokens.get(s, 0) + int(out["completion_mask"].sum())
            return out

    gen_kwargs = {"min_new_tokens": a.min_new_tokens} if a.min_new_tokens else None
    cfg = GRPOConfig(
        output_dir=f"{a.out}/trl_grpo", per_device_train_batch_size=completions // a.micro,
        gradient_accumulation_steps=a.micro, steps_per_generation=a.micro, num_generations=a.generations,
        max_steps=a.steps, learning_rate=2e-4, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, report_to=[], save_strategy="no",
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, seed=0, dataloader_num_workers=0,
        shuffle_dataset=False, max_completion_length=a.max_completion, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs=gen_kwargs, beta=0.0, num_iterations=1, epsilon=0.2, epsilon_high=0.28,
        loss_type="dapo", scale_rewards="group", mask_truncated_completions=False,
        reward_weights=[0.7, 0.2, 0.1], log_completions=False, disable_dropout=True,
    )
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = Counting(model=model, reward_funcs=[correct, format_reward, language], args=cfg, train_dataset=data,
                       processing_class=tok, peft_config=peft, callbacks=[Timer()])
    trainer.train()


if __name__ == "__main__":
    main()

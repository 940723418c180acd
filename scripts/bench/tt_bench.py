"""torchtune side of scripts/bench/finetune.sh (run with the torchtune venv, see
torchtune-venv.sh), and the recipe components it needs.

    python tt_bench.py config OUT_DIR --mode lora|full|kd [--steps 6] [--batch 4]   # writes the YAML
    PYTHONPATH=scripts/bench tune run lora_finetune_single_device --config OUT_DIR/tt_lora/config.yaml

Mode kd (scripts/bench/kd.sh, recipe knowledge_distillation_single_device): the LoRA student of
mode lora plus a frozen teacher, the same f32 SmolLM2-135M (`teacher_model`,
`teacher_checkpointer`), forward KL (ForwardKLWithChunkedOutputLoss) with kd_ratio 0.5.

SmolLM2-135M runs through torchtune's `llama3_2` component builders: plain RoPE (scale_factor 1),
rope_base 100000, tied embeddings, FullModelHFCheckpointer with model_type LLAMA3_2. torchtune
0.6.1 has no tokenizer for Hugging Face tokenizer files, and this benchmark needs none: the data
are the pre-tokenized rows of finetune_data.py (`rows_dataset`, labels = tokens: the recipe shifts
them, seq - 1 label tokens per row), and `RowsTokenizer` only supplies the pad id the collator
asks for.
"""

import argparse
import json
import os

from torch.utils.data import Dataset


class RowsTokenizer:
    """The tokenizer component of the benchmark config: the collator only needs `pad_id`."""

    def __init__(self, pad_id: int = 2, max_seq_len: int = 512):
        self.pad_id = pad_id
        self.max_seq_len = max_seq_len


class _Rows(Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"tokens": list(self.rows[i]), "labels": list(self.rows[i])}


def rows_dataset(tokenizer, path: str, packed: bool = False):
    """Dataset builder: the rows of rows.json, every token a label."""
    with open(path) as f:
        return _Rows(json.load(f))


MODEL = dict(vocab_size=49152, num_layers=30, num_heads=9, num_kv_heads=3, embed_dim=576,
             max_seq_len=8192, intermediate_dim=1536, norm_eps=1e-5, rope_base=100000,
             scale_factor=1, tie_word_embeddings=True)


def write_config(out, mode, steps, batch, lr, targets):
    run_dir = os.path.abspath(os.path.join(out, f"tt_{mode}"))
    os.makedirs(run_dir, exist_ok=True)
    model = dict(MODEL)
    if mode in ("lora", "kd"):
        model.update(_component_="torchtune.models.llama3_2.lora_llama3_2",
                     lora_attn_modules=targets, apply_lora_to_mlp=False, apply_lora_to_output=False,
                     lora_rank=8, lora_alpha=16, lora_dropout=0.0)
    else:
        model.update(_component_="torchtune.models.llama3_2.llama3_2")
    cfg = {
        "output_dir": run_dir,
        "model": model,
        "tokenizer": {"_component_": "tt_bench.RowsTokenizer", "pad_id": 2, "max_seq_len": 512},
        "checkpointer": {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": os.path.abspath(os.path.join(out, "model")),
            "checkpoint_files": ["model.safetensors"],
            "recipe_checkpoint": None,
            "output_dir": run_dir,
            "model_type": "LLAMA3_2",
        },
        "resume_from_checkpoint": False,
        "dataset": {"_component_": "tt_bench.rows_dataset",
                    "path": os.path.abspath(os.path.join(out, "rows.json")), "packed": False},
        "seed": 0,
        "shuffle": False,
        "batch_size": batch,
        "optimizer": {"_component_": "torch.optim.AdamW", "fused": True, "weight_decay": 0.01, "lr": lr},
        "lr_scheduler": {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                         "num_warmup_steps": 10},
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "epochs": 1,
        "max_steps_per_epoch": steps,
        "gradient_accumulation_steps": 1,
        "clip_grad_norm": 1.0,
        "compile": False,
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger",
                          "log_dir": os.path.join(run_dir, "logs")},
        "log_every_n_steps": 1,
        "log_peak_memory_stats": False,
        "device": "cpu",
        "dtype": "fp32",
        "enable_activation_checkpointing": False,
        "enable_activation_offloading": False,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
    }
    if mode == "kd":
        cfg["teacher_model"] = dict(MODEL, _component_="torchtune.models.llama3_2.llama3_2")
        cfg["teacher_checkpointer"] = dict(cfg["checkpointer"], output_dir=os.path.join(run_dir, "teacher"))
        cfg["kd_loss"] = {"_component_": "torchtune.modules.loss.ForwardKLWithChunkedOutputLoss"}
        cfg["kd_ratio"] = 0.5
    if mode in ("lora", "kd"):
        cfg["save_adapter_weights_only"] = True
    else:
        cfg["optimizer_in_bwd"] = False
    path = os.path.join(run_dir, "config.yaml")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)   # JSON is YAML
    print(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["config"])
    ap.add_argument("out")
    ap.add_argument("--mode", choices=["lora", "full", "kd"], required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--targets", default="q_proj,v_proj")
    a = ap.parse_args()
    write_config(a.out, a.mode, a.steps, a.batch, a.lr, a.targets.split(","))


if __name__ == "__main__":
    main()

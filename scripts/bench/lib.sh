# Shared pieces of the CPU training benchmarks (finetune.sh, dpo.sh, kd.sh), sourced by them from
# the repository root after `set -euo pipefail`:
#   bench_setup NAME FRAMEWORKS
#                        frameworks = FRAMEWORKS from the environment, else the second argument;
#                        ttpy = the torchtune venv (torchtune-venv.sh) when torchtune is one; reads
#                        STEPS (default $default_steps, else 6), REPEATS (1), THREADS (2) and
#                        BATCH (4) into steps / repeats / threads / batch; sets seq (512), assets,
#                        gguf (the SmolLM2-135M-Instruct Q4_1 GGUF), py (the reference venv, PEFT
#                        installed; AFINAR_PYTHON if set, as for the tests); AFINAR_BIN (a release build unless set, when afinar is one of the frameworks); work
#                        (WORK, or a temporary folder removed at exit); the thread variables.
#   bench_data ARGS...   scripts/bench/finetune_data.py into $work (same rows for every framework).
#   timed TIME LOG CMD…  runs CMD under /usr/bin/time -v (peak RSS of the whole process).
#   loadavg              the 1-, 5- and 15-minute load averages.
#   bench_machine        one line: the CPU model and the afinar build's CPU level (the processor
#                        to name next to every figure).

bench_setup() {
  bench_name=$1
  frameworks=${FRAMEWORKS:-$2}
  steps=${STEPS:-${default_steps:-6}}
  repeats=${REPEATS:-1}
  threads=${THREADS:-2}
  batch=${BATCH:-4}   # change only to debug the script quickly
  seq=512
  assets=$(./scripts/fetch-assets.sh)
  gguf=$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
  py=${AFINAR_PYTHON:-$(./scripts/reference-venv.sh)}
  "$py" -c 'import peft' 2>/dev/null || "$py" -m pip install --quiet peft==0.21.2 >&2
  case " $frameworks " in *" afinar "*) bench_afinar_bin ;; esac
  case " $frameworks " in *" torchtune "*) ttpy=$(./scripts/bench/torchtune-venv.sh) ;; esac
  bench_workdir
  export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
}

# bench_afinar_bin: AFINAR_BIN, or a release build of afinar-cli (target/release/afinar).
bench_afinar_bin() {
  if [ -z "${AFINAR_BIN:-}" ]; then
    cargo build --quiet --release -p afinar-cli >&2
    AFINAR_BIN=target/release/afinar
  fi
}

# bench_workdir: work = WORK (created), or a temporary folder removed at exit; an absolute path.
bench_workdir() {
  if [ -n "${WORK:-}" ]; then
    work=$WORK; mkdir -p "$work"
  else
    work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  fi
  work=$(cd "$work" && pwd)
}

# bench_start WHAT: the opening lines (WHAT, the load, the processor); runs=() and fail=0.
bench_start() {
  echo "$bench_name: $1, $threads threads; load $(loadavg)" >&2
  bench_machine >&2
  runs=()
  fail=0
}

# bench_round FRAMEWORK ROUND: dir = a fresh $work/FRAMEWORK_rROUND, and a line with the load.
bench_round() {
  dir=$work/${1}_r$2
  rm -rf "$dir"; mkdir -p "$dir"
  echo "$bench_name: round $2, $1 (load $(loadavg))" >&2
}

# bench_report ARGS...: finetune_report.py's table of the runs, the load and processor after;
# exits with the benchmark's status.
bench_report() {
  python3 scripts/bench/finetune_report.py "$@" "${runs[@]}" || fail=1
  echo "load after: $(loadavg)" >&2
  bench_machine >&2
  exit $fail
}

bench_data() {
  TQDM_DISABLE=1 "$py" scripts/bench/finetune_data.py "$gguf" "$work" --seq "$seq" "$@" >&2
}

timed() { # time_file log command...: runs the command under /usr/bin/time -v
  local tf=$1 log=$2; shift 2
  /usr/bin/time -v -o "$tf" "$@" > "$log" 2>&1
}

loadavg() {
  cut -d' ' -f1-3 /proc/loadavg
}

bench_machine() {
  local cpu fam model flags level=""
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  fam=$(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -1)
  model=$(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -1)
  flags=$(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx2|fma|avx512f|avx512_vnni|avx512_bf16|amx_tile' \
    | tr '\n' ' ')
  [ -n "${AFINAR_BIN:-}" ] && level=$("$AFINAR_BIN" --version 2>/dev/null | grep -i 'cpu level' | head -1)
  echo "processor: $cpu (family $fam, model $model; ${flags% }), $(nproc) CPUs${level:+; afinar $level}"
}

# afinar_common DIR DTYPE: into the array afinar_args, the key=value overrides every afinar run of
# these benchmarks shares (the peers' trainer settings: batch × seq, STEPS steps in file order,
# AdamW lr 3e-4, weight decay 0.01, clipping 1.0, no activation checkpointing, THREADS threads,
# metrics every step), then with LoRA (rank 8, alpha 16, no dropout, q_proj and v_proj, adapter
# saved alone) unless the third argument is "full", then AFINAR_EXTRA's words (last: they win).
afinar_common() {
  local dir=$1 dtype=$2 mode=${3:-lora} more
  afinar_args=(output_dir="$dir/out" model.path="$work/model" model.dtype="$dtype" tokenizer.max_seq_len=$seq
    batch_size="$batch" epochs=1 max_steps_per_epoch="$steps" gradient_accumulation_steps=1
    shuffle=false seed=0 threads="$threads" optimizer.lr=3e-4 optimizer.weight_decay=0.01
    clip_grad_norm=1.0 enable_activation_checkpointing=false log_every_n_steps=1)
  [ "$mode" = full ] || afinar_args+=(lora.rank=8 lora.alpha=16 lora.dropout=0.0
    "lora.target_modules=[q_proj,v_proj]" save_adapter_weights_only=true merge_adapter=false)
  read -r -a more <<< "${AFINAR_EXTRA:-}"
  afinar_args+=("${more[@]}")
}

# torchtune_run DIR MODE RECIPE: one torchtune run (the venv of torchtune-venv.sh in $ttpy) of
# tt_bench.py's config for MODE (lora | full | kd), with TT_EXTRA's key=value overrides, timed
# into DIR (time.txt, run.log, and its DiskLogger file log_*.txt). Fails as the run does.
torchtune_run() {
  local dir=$1 mode=$2 recipe=$3 cfg rc=0 tt_more
  rm -rf "$work/tt_$mode"
  cfg=$("$ttpy" scripts/bench/tt_bench.py config "$work" --mode "$mode" --steps "$steps" --batch "$batch")
  # TT_EXTRA: key=value overrides for torchtune (e.g. optimizer_in_bwd=True clip_grad_norm=null)
  read -r -a tt_more <<< "${TT_EXTRA:-}"
  timed "$dir/time.txt" "$dir/run.log" env PYTHONPATH="$PWD/scripts/bench" \
    "$(dirname "$ttpy")/tune" run "$recipe" --config "$cfg" "${tt_more[@]}" || rc=$?
  cp "$work"/tt_$mode/logs/log_*.txt "$dir/" 2>/dev/null || true
  return $rc
}

# bench_failed FRAMEWORK DIR: says that FRAMEWORK's run failed (the end of DIR/run.log) and sets
# fail=1, the benchmark's exit status.
bench_failed() {
  echo "$bench_name: $1 failed:" >&2
  tail -5 "$2/run.log" >&2
  fail=1
}

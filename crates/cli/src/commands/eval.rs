//! `afinar eval`: perplexity, multiple-choice, exact-match and preference tasks, per language; the table on
//! stdout, progress on stderr, everything in `--output FILE.json`.

use std::path::{Path, PathBuf};

use afinar::eval::{
    check_tasks, run_tasks, ChoiceFormat, ChoiceOptions, EvalConfig, ExactMatchOptions, FewshotSampler,
    PerplexityOptions, PreferenceOptions, TaskKind, TaskSpec,
};
use anyhow::{bail, Context, Result};
use clap::Args;

use afinar::engine::Backend;

use super::{load, on_device, DTypeArg, Job, KvCacheArg, ModelArgs};

/// Arguments of `afinar eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A GGUF file, a Hugging Face checkpoint folder or a Hub repository (hf://org/name[@rev],
    /// org/name) (default: the config's `model`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tokenizer file (tokenizer.json or tokenizer.model) when the checkpoint has none.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    threads: Option<usize>,
    /// Storage of the weights (`auto` on a GPU: bf16).
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DTypeArg,
    /// Where to run: cpu, cuda (GPU 0) or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Storage of the KV cache of the multiple-choice and exact-match tasks: f32 (exact
    /// log-likelihoods, as lm-evaluation-harness in f32) or f16 (half the memory traffic; keys
    /// and values rounded to 11 significant bits, which moves log-likelihoods by ~1e-3).
    #[arg(long, value_enum, default_value = "f32")]
    kv_cache: KvCacheArg,
    /// Eval config (YAML) listing the tasks, each with a language (see data/eval/bilingual.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Perplexity of a text file, `[LANG=]FILE` (repeatable).
    #[arg(long = "perplexity", value_name = "[LANG=]FILE")]
    perplexity: Vec<String>,
    /// Multiple-choice JSONL file, `[LANG=]FILE` (repeatable).
    #[arg(long = "choice", value_name = "[LANG=]FILE")]
    choice: Vec<String>,
    /// Layout and prompt of the --choice files.
    #[arg(long, default_value = "arc", value_parser = ["arc", "hellaswag", "piqa", "mmlu"])]
    format: String,
    /// Few-shot examples for the --choice file of the same language, `[LANG=]FILE` (repeatable).
    #[arg(long = "fewshot-file", value_name = "[LANG=]FILE")]
    fewshot_file: Vec<String>,
    /// Few-shot examples per item.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = super::count)]
    num_fewshot: usize,
    /// How few-shot examples are picked: random (seeded) or first_n.
    #[arg(long, default_value = "random", value_parser = ["random", "first_n"])]
    fewshot_sampler: String,
    /// Seed of the random few-shot sampler.
    #[arg(long, default_value_t = 1234, allow_negative_numbers = true, value_parser = super::seed_value)]
    seed: u64,
    /// Exact-match generation JSONL file (`prompt`, `target`), `[LANG=]FILE` (repeatable).
    #[arg(long = "exact-match", value_name = "[LANG=]FILE")]
    exact_match: Vec<String>,
    /// Most new tokens per exact-match answer.
    #[arg(long, default_value_t = 32, allow_negative_numbers = true, value_parser = super::count)]
    max_new_tokens: usize,
    /// Stop strings of exact-match generation (repeatable; default a newline).
    #[arg(long)]
    stop: Vec<String>,
    /// Wrap exact-match prompts in the chat template (rows may say otherwise with `chat`).
    #[arg(long)]
    chat: bool,
    /// Exact match ignores case.
    #[arg(long)]
    ignore_case: bool,
    /// Exact match ignores punctuation.
    #[arg(long)]
    ignore_punctuation: bool,
    /// Preference file (`prompt`/`chosen`/`rejected`, or chosen/rejected message lists),
    /// `[LANG=]FILE` (repeatable); rows with a `lang` column are filtered to LANG.
    #[arg(long = "preference", value_name = "[LANG=]FILE")]
    preference: Vec<String>,
    /// Perplexity window in tokens (default: the model's context, at most 1024).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    max_length: Option<usize>,
    /// Perplexity stride in tokens (default: half the window).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    stride: Option<usize>,
    /// Score only the first N items of each multiple-choice, exact-match and preference task
    /// (config tasks included).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    limit: Option<usize>,
    /// Also write every number (and each item's outcome) to this JSON file.
    #[arg(long, value_name = "FILE.json")]
    output: Option<PathBuf>,
}

/// `LANG=FILE` or `FILE` (language `-`).
fn lang_file(spec: &str, flag: &str) -> Result<(String, PathBuf)> {
    let (lang, file) = match spec.split_once('=') {
        Some((l, f)) if !l.is_empty() && !l.contains(['/', '\\']) => (l.to_string(), f),
        _ => ("-".to_string(), spec),
    };
    if file.is_empty() {
        bail!("{flag} {spec:?}: expected [LANG=]FILE");
    }
    let path = PathBuf::from(file);
    if !path.exists() {
        bail!("{flag} {spec}: {}: no such file", path.display());
    }
    Ok((lang, path))
}

/// The tasks given by flags.
fn flag_tasks(args: &EvalArgs) -> Result<Vec<TaskSpec>> {
    let mut tasks = Vec::new();
    for spec in &args.perplexity {
        let (language, file) = lang_file(spec, "--perplexity")?;
        let opts = PerplexityOptions { max_length: args.max_length, stride: args.stride, add_bos: None };
        tasks.push(TaskSpec {
            name: "perplexity".into(),
            language,
            kind: TaskKind::Perplexity { file, opts },
        });
    }
    let fewshot: Vec<(String, PathBuf)> =
        args.fewshot_file.iter().map(|s| lang_file(s, "--fewshot-file")).collect::<Result<_>>()?;
    for (lang, _) in &fewshot {
        if !args.choice.iter().any(|c| lang_file(c, "--choice").is_ok_and(|(l, _)| &l == lang)) {
            bail!("--fewshot-file for language {lang} but no --choice file of that language");
        }
    }
    for spec in &args.choice {
        let (language, file) = lang_file(spec, "--choice")?;
        let fewshot_file = fewshot.iter().find(|(l, _)| *l == language).map(|(_, f)| f.clone());
        if args.num_fewshot > 0 && fewshot_file.is_none() {
            bail!("--num-fewshot {} needs a --fewshot-file for language {language}", args.num_fewshot);
        }
        let opts = ChoiceOptions {
            num_fewshot: args.num_fewshot,
            sampler: FewshotSampler::from_name(&args.fewshot_sampler).unwrap_or_default(),
            seed: args.seed,
            limit: args.limit,
        };
        let format = ChoiceFormat::from_name(&args.format).unwrap_or(ChoiceFormat::Arc);
        tasks.push(TaskSpec {
            name: "multiple_choice".into(),
            language,
            kind: TaskKind::MultipleChoice { file, format, fewshot_file, opts },
        });
    }
    for spec in &args.exact_match {
        let (language, file) = lang_file(spec, "--exact-match")?;
        let mut opts = ExactMatchOptions {
            max_new_tokens: args.max_new_tokens,
            chat: args.chat,
            ignore_case: args.ignore_case,
            ignore_punctuation: args.ignore_punctuation,
            limit: args.limit,
            ..Default::default()
        };
        if !args.stop.is_empty() {
            opts.stop = args.stop.clone();
        }
        tasks.push(TaskSpec {
            name: "exact_match".into(),
            language,
            kind: TaskKind::ExactMatch { file, opts },
        });
    }
    for spec in &args.preference {
        let (language, file) = lang_file(spec, "--preference")?;
        let opts = PreferenceOptions { limit: args.limit, ..Default::default() };
        tasks.push(TaskSpec {
            name: "preference".into(),
            language,
            kind: TaskKind::Preference { file, opts },
        });
    }
    Ok(tasks)
}

fn check_output(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("--output {}: the folder {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!("--output {}: is a folder; expected a file name such as results.json", path.display());
    }
    Ok(())
}

/// Runs the command.
pub fn run(args: EvalArgs) -> Result<()> {
    let config = args.config.as_deref().map(EvalConfig::load).transpose()?;
    let mut tasks = config.as_ref().map(|c| c.tasks.clone()).unwrap_or_default();
    tasks.extend(flag_tasks(&args)?);
    if tasks.is_empty() {
        bail!(
            "nothing to evaluate: give --config FILE.yaml, or --perplexity, --choice, --exact-match or --preference files"
        );
    }
    if let Some(limit) = args.limit {
        for t in &mut tasks {
            match &mut t.kind {
                TaskKind::MultipleChoice { opts, .. } => opts.limit = Some(limit),
                TaskKind::ExactMatch { opts, .. } => opts.limit = Some(limit),
                TaskKind::Preference { opts, .. } => opts.limit = Some(limit),
                TaskKind::Reward { opts, .. } => opts.limit = Some(limit),
                TaskKind::Perplexity { .. } => {}
            }
        }
    }
    check_tasks(&tasks)?;
    if let Some(out) = &args.output {
        check_output(out)?;
    }
    let model = args
        .model
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.model.clone()))
        .context("no model: give --model PATH (or `model:` in the eval config)")?;
    let tokenizer = args.tokenizer.clone().or_else(|| config.as_ref().and_then(|c| c.tokenizer.clone()));
    let margs = ModelArgs {
        model,
        tokenizer,
        threads: args.threads,
        dtype: args.dtype,
        device: args.device.clone(),
        kv_cache: args.kv_cache,
    };
    on_device(&margs, Eval { args: &args, margs: &margs, tasks: &tasks })
}

struct Eval<'a> {
    args: &'a EvalArgs,
    margs: &'a ModelArgs,
    tasks: &'a [TaskSpec],
}

impl Job for Eval<'_> {
    type Output = Result<()>;
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let Eval { args, margs, tasks } = self;
        let (loaded, tok) = load(be, margs)?;
        evaluate(be, args, margs, tasks, &loaded.model, &tok)
    }
}

fn evaluate<B: Backend>(
    be: &B,
    args: &EvalArgs,
    margs: &ModelArgs,
    tasks: &[TaskSpec],
    model: &afinar::models::Llama<B>,
    tok: &afinar::tokenizer::Tokenizer,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut last_line = std::time::Instant::now();
    let report =
        run_tasks(be, model, tok, &margs.model.display().to_string(), tasks, |task, done, total| {
            if done == total || last_line.elapsed().as_secs_f64() > 5.0 {
                eprintln!("afinar: {} ({}, {}): {done}/{total}", task.name, task.language, task.kind.name());
                last_line = std::time::Instant::now();
            }
        })?;
    eprintln!("afinar: {} tasks in {:.1}s", report.tasks.len(), t0.elapsed().as_secs_f64());
    print!("{}", report.table());
    if let Some(out) = &args.output {
        report.write_json(out).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("afinar: wrote {}", out.display());
    }
    Ok(())
}

//! The `afinar` binary end to end on the real SmolLM2-135M-Instruct GGUF and Llama-3 tokenizer:
//! stdout carries only the generated text, errors exit non-zero with a message and never panic.

mod common;

use common::{afinar_with_input as afinar, assert_clean_failure, asset, fixture, smollm2, text};

/// `generate` prints exactly transformers' greedy continuation on stdout, stats on stderr.
#[test]
fn generate_prints_only_the_continuation() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("models/smollm2/prompts.json")).unwrap())
            .unwrap();
    let p = &meta["prompts"][0];
    let prompt = p["text"].as_str().unwrap();
    let want = p["generation"]["text_skip_special"].as_str().unwrap();
    let model = smollm2();
    let out = afinar(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
            "--max-new-tokens",
            "32",
            "--temperature",
            "0",
            // The expected text is transformers' f32 output: compare with f32 weights.
            "--dtype",
            "f32",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{want}\n"));
    assert!(text(&out.stderr).contains("tokens/s"));
}

#[test]
fn chat_answers_from_piped_input() {
    let model = smollm2();
    let out = afinar(
        // f32 weights: with the default (`auto`: the GGUF's Q4_1/Q8_0 blocks and 8-bit
        // activations, as llama.cpp computes) this 135M model answers the system-prompted
        // question with "L'Étoile, …", exactly as llama.cpp does.
        &["chat", "--model", model.to_str().unwrap(), "--max-new-tokens", "24", "--dtype", "f32"],
        Some("What is the capital of France?\nAnd of Spain?\n/exit\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stdout.contains("Madrid"), "{stdout}");
}

#[test]
fn tokenize_stats_in_english_and_spanish() {
    let tok = asset("llama3-tokenizer/tokenizer.json");
    let stats = |s: &str| -> serde_json::Value {
        let out = afinar(&["tokenize", "--tokenizer", tok.to_str().unwrap(), "--stats", "--json", s], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_str(&text(&out.stdout)).unwrap()
    };
    let en = stats(
        "The committee approved the new regulations after a long debate about their economic consequences.",
    );
    let es = stats("El comité aprobó las nuevas regulaciones después de un largo debate sobre sus consecuencias económicas.");
    assert_eq!(en["words"], 14);
    assert_eq!(es["words"], 15);
    assert!(es["tokens"].as_u64() > en["tokens"].as_u64(), "{en} {es}");
    let out = afinar(&["tokenize", "--tokenizer", tok.to_str().unwrap(), "--bos", "Hola"], None);
    assert!(text(&out.stdout).starts_with("128000 "), "{}", text(&out.stdout));
}

#[test]
fn bad_inputs_fail_cleanly() {
    let model = smollm2();
    let m = model.to_str().unwrap();
    assert_clean_failure(
        &afinar(&["generate", "--model", "/no/such/model.gguf", "--prompt", "hi"], None),
        "/no/such/model.gguf",
    );
    assert_clean_failure(
        &afinar(&["generate", "--model", m, "--prompt", "hi", "--temperature=-1"], None),
        "--temperature",
    );
    assert_clean_failure(
        &afinar(&["generate", "--model", m, "--prompt", "hi", "--top-p", "0"], None),
        "--top-p",
    );
    assert_clean_failure(
        &afinar(&["tokenize", "--tokenizer", "/no/tokenizer.json", "x"], None),
        "/no/tokenizer.json",
    );
    assert_clean_failure(
        &afinar(&["generate", "--model", m, "--prompt", "hi", "--device", "tpu"], None),
        "--device tpu",
    );
    // Without a GPU (CI), `--device cuda` says what is missing; with one, it generates.
    let out = afinar(
        &["generate", "--model", m, "--prompt", "hi", "--max-new-tokens", "2", "--device", "cuda"],
        None,
    );
    if !out.status.success() {
        assert_clean_failure(&out, "--device cuda");
    }
    // a folder of random files is no checkpoint
    let dir = std::env::temp_dir().join(format!("afinar-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_clean_failure(
        &afinar(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "hi"], None),
        "config.json",
    );
    // a prompt longer than the 8192-token context
    let long = dir.join("long.txt");
    std::fs::write(&long, "uno dos tres cuatro ".repeat(3000)).unwrap();
    assert_clean_failure(
        &afinar(
            &["generate", "--model", m, "--prompt-file", long.to_str().unwrap(), "--max-new-tokens", "4"],
            None,
        ),
        "context",
    );
    // a tiny model folder without a tokenizer asks for --tokenizer
    let tiny = fixture("models/llama32_tiny");
    assert_clean_failure(
        &afinar(&["generate", "--model", tiny.to_str().unwrap(), "--prompt", "hi"], None),
        "--tokenizer",
    );
    // unknown flags are usage errors
    let out = afinar(&["generate", "--model", m, "--bogus"], None);
    assert_eq!(out.status.code(), Some(2));
}

/// A negative number for a numeric option names the option and what was expected (clap used to
/// call `-1` an unexpected argument).
#[test]
fn negative_numbers_name_the_option() {
    let model = smollm2();
    let m = model.to_str().unwrap();
    let out = afinar(&["generate", "--model", m, "--prompt", "hi", "--temperature", "-1"], None);
    assert_clean_failure(&out, "--temperature must be a number ≥ 0, got -1");
    let out = afinar(&["generate", "--model", m, "--prompt", "hi", "--max-new-tokens", "-5"], None);
    assert_clean_failure(
        &out,
        "invalid value '-5' for '--max-new-tokens <MAX_NEW_TOKENS>': expected a whole number ≥ 0",
    );
    let out = afinar(&["generate", "--model", m, "--prompt", "hi", "--top-k", "-3"], None);
    assert_clean_failure(&out, "'--top-k <TOP_K>': expected a whole number ≥ 0");
    let out = afinar(&["generate", "--model", m, "--prompt", "hi", "--seed", "-1"], None);
    assert_clean_failure(&out, "'--seed <SEED>': expected a whole number from 0");
}

/// The operating system's error is printed once, not once in the error's message and again as
/// its cause (anyhow's chain).
#[test]
fn os_errors_are_printed_once() {
    // A folder whose tokenizer.json is a folder: reading it fails with "Is a directory".
    let dir = std::env::temp_dir().join(format!("afinar-cli-oserr-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tokenizer.json")).unwrap();
    let out = afinar(&["tokenize", "--tokenizer", dir.to_str().unwrap(), "x"], None);
    let _ = std::fs::remove_dir_all(&dir);
    assert_clean_failure(&out, "tokenizer.json: ");
    let err = text(&out.stderr);
    let os = err.find("(os error").map(|i| &err[i..]).unwrap_or_else(|| panic!("no OS error in {err}"));
    let code = &os[..os.find(')').unwrap() + 1];
    assert_eq!(err.matches(code).count(), 1, "{err}");
}

/// `afinar --version` shows the CPU level and the `AFINAR_CPU_LEVEL` cap, the load line says
/// when the cap lowered the level, and a value that names no level is a clean error.
#[test]
fn cpu_level_cap_is_shown_and_checked() {
    let run = |cap: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_afinar"));
        cmd.args(args);
        match cap {
            Some(v) => cmd.env("AFINAR_CPU_LEVEL", v),
            None => cmd.env_remove("AFINAR_CPU_LEVEL"),
        };
        cmd.output().expect("run afinar")
    };
    let out = run(None, &["--version"]);
    assert!(out.status.success());
    let version = text(&out.stdout);
    assert!(version.contains("cpu level: ") && version.contains("AFINAR_CPU_LEVEL cap: none"), "{version}");
    let out = run(Some("portable"), &["--version"]);
    let capped = text(&out.stdout);
    assert!(
        capped.contains("cpu level: portable (detected ") && capped.contains("cap: portable"),
        "{capped}"
    );

    let model = smollm2();
    let m = model.to_str().unwrap();
    let gen = ["generate", "--model", m, "--prompt", "hi", "--max-new-tokens", "1", "--threads", "1"];
    let out = run(Some("portable"), &gen);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let detected_portable = version.contains("cpu level: portable");
    let want = if detected_portable { "cpu (1 thread, portable)" } else { "portable; capped from " };
    assert!(err.contains(want), "load line should say {want:?}: {err}");
    assert_clean_failure(
        &run(Some("avx9"), &gen),
        "AFINAR_CPU_LEVEL=\"avx9\" is not a CPU level: expected one of portable, avx2, avx512",
    );
}

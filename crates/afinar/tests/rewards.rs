//! Rewards (GRPO): each built-in rule, the weighted sum, the external-command reward (a POSIX sh
//! script, and a Python one when `AFINAR_PYTHON` is set) with every failure mode giving its named
//! error, the `rewards:` list read from YAML with file:line:col errors, and the shipped preset of
//! `data/grpo_arith`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use afinar::rewards::{detect_language, parse_number, Completion, RewardError, RewardSet};
use serde_json::{json, Value};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("afinar-rewards").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fields(v: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(v).unwrap()
}

fn set(list: Value) -> RewardSet {
    RewardSet::from_json(&list, None).unwrap_or_else(|e| panic!("{e}"))
}

fn spec_err(list: Value) -> String {
    match RewardSet::from_json(&list, None) {
        Ok(_) => panic!("expected an error for {list}"),
        Err(e) => e.to_string(),
    }
}

/// Completions of one prompt (`prompt_text`) for rows `fields`.
fn batch<'a>(
    prompt_text: &'a str,
    completions: &'a [&'a str],
    f: &'a BTreeMap<String, Value>,
) -> Vec<Completion<'a>> {
    completions
        .iter()
        .enumerate()
        .map(|(i, c)| Completion {
            prompt: prompt_text,
            prompt_text,
            completion: c,
            completion_tokens: c.split_whitespace().count(),
            fields: f,
            row: 10 + i,
        })
        .collect()
}

fn scores(s: &RewardSet, b: &[Completion<'_>]) -> Vec<f64> {
    s.score(b).unwrap_or_else(|e| panic!("{e}")).total
}

#[test]
fn exact_match_compares_the_extracted_answer() {
    let f = fields(json!({"answer": "Paris", "n": 42}));
    let s = set(json!([{"kind": "exact_match"}]));
    let c = ["The capital.\n#### Paris ", "#### paris", "Paris", "#### Lyon\n#### Paris"];
    assert_eq!(
        scores(&s, &batch("q", &c, &f)),
        [1.0, 0.0, 0.0, 1.0],
        "the last #### line, trimmed, case kept"
    );
    let s = set(json!([{"kind": "exact_match", "field": "n", "pattern": "(?i)answer:\\s*(\\S+)"}]));
    let c = ["Answer: 42", "answer: 41", "42"];
    assert_eq!(scores(&s, &batch("q", &c, &f)), [1.0, 0.0, 0.0], "a number field compares as its text");
    let e = spec_err(json!([{"kind": "exact_match", "pattern": "(a)(b)"}]));
    assert!(e.contains("rewards[0].pattern: \"(a)(b)\" has 2 capture groups; expected at most 1"), "{e}");
    let e = spec_err(json!([{"kind": "exact_match", "pattern": "(unclosed"}]));
    assert!(e.contains("rewards[0].pattern: not a valid regular expression"), "{e}");
    // A row without the field is an error naming the reward and row, not a silent 0.
    let none = fields(json!({"lang": "en"}));
    let e = set(json!([{"kind": "exact_match"}])).score(&batch("q", &["#### x"], &none)).unwrap_err();
    assert!(matches!(e, RewardError::Row { row: 10, index: 0, .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("reward exact_match: completion 0 (dataset row 10): the row has no \"answer\" column (it has lang)"), "{e}");
}

#[test]
fn numeric_match_reads_numbers_as_answers_write_them() {
    let f = fields(json!({"answer": 7}));
    let s = set(json!([{"kind": "numeric_match"}]));
    let c = ["3 + 4 = 7", "3 + 4 = 7.", "Answer: 7.0", "7 apples, not 8", "seven", "3 + 4 = -7"];
    assert_eq!(scores(&s, &batch("q", &c, &f)), [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], "the last number");
    let f = fields(json!({"answer": "1234"}));
    assert_eq!(scores(&s, &batch("q", &["it is 1,234", "1.234,5"], &f)), [1.0, 0.0]);
    let f = fields(json!({"answer": "3,5"}));
    assert_eq!(scores(&s, &batch("q", &["3.5"], &f)), [1.0]);
    let s = set(json!([{"kind": "numeric_match", "tolerance": 0.5, "pattern": "Answer:\\s*(-?[\\d.]+)"}]));
    let f = fields(json!({"answer": 10}));
    assert_eq!(scores(&s, &batch("q", &["Answer: 10.4 (or 3)", "Answer: 10.6", "10"], &f)), [1.0, 0.0, 0.0]);
    let bad = fields(json!({"answer": "ten"}));
    let e = s.score(&batch("q", &["Answer: 10"], &bad)).unwrap_err().to_string();
    assert!(
        e.contains(
            "dataset row 10): column \"answer\": expected a number (or a string holding one), found \"ten\""
        ),
        "{e}"
    );
    assert_eq!(parse_number(" -12 "), Some(-12.0));
    assert_eq!(parse_number("1,000,000"), Some(1e6));
    assert_eq!(parse_number("nan"), None);
    assert_eq!(parse_number("inf"), None);
    let e = spec_err(json!([{"kind": "numeric_match", "tolerance": -1}]));
    assert!(e.contains("rewards[0].tolerance: expected a number ≥ 0, got -1"), "{e}");
}

#[test]
fn regex_format_and_length_penalty() {
    let f = fields(json!({}));
    let s = set(json!([{"kind": "format", "pattern": "Answer: \\d+$"}]));
    assert_eq!(
        scores(&s, &batch("q", &["So.\nAnswer: 12", "Answer: 12 apples", "answer: 12"], &f)),
        [1.0, 0.0, 0.0]
    );
    let s = set(json!([{"kind": "regex", "pattern": "Answer: \\d+", "full": true}]));
    assert_eq!(
        scores(&s, &batch("q", &["  Answer: 12\n", "So.\nAnswer: 12"], &f)),
        [1.0, 0.0],
        "full: the whole trimmed text"
    );
    let e = spec_err(json!([{"kind": "regex"}]));
    assert!(e.contains("rewards[0].pattern: missing required key (a regular expression)"), "{e}");

    let s = set(json!([{"kind": "length_penalty", "target": 2, "max": 6}]));
    // completion_tokens here: words.
    let c = ["a b", "a b c d", "a b c d e f", "a b c d e f g h"];
    assert_eq!(scores(&s, &batch("q", &c, &f)), [1.0, 0.5, 0.0, 0.0]);
    let s = set(json!([{"kind": "length_penalty", "target": 0, "max": 4, "unit": "chars"}]));
    assert_eq!(scores(&s, &batch("q", &["", "ab", "abcdef"], &f)), [1.0, 0.5, 0.0]);
    let e = spec_err(json!([{"kind": "length_penalty", "target": 5, "max": 5}]));
    assert!(e.contains("rewards[0].max: expected an integer > target (5), got 5"), "{e}");
    let e = spec_err(json!([{"kind": "length_penalty", "target": 1, "max": 5, "unit": "words"}]));
    assert!(e.contains("rewards[0].unit: expected one of tokens, chars, got \"words\""), "{e}");
}

#[test]
fn language_matches_the_rows_or_the_prompts_language() {
    let s = set(json!([{"kind": "language"}]));
    let en = fields(json!({"lang": "en"}));
    let es = fields(json!({"lang": "es-MX"}));
    let c = ["Tom has 7 apples now.\nAnswer: 7", "Tom tiene 7 manzanas.\nRespuesta: 7", "7"];
    assert_eq!(scores(&s, &batch("q", &c, &en)), [1.0, 0.0, 0.0], "an answer of no language scores 0");
    assert_eq!(scores(&s, &batch("q", &c, &es)), [0.0, 1.0, 0.0]);
    // Without a lang column: the prompt's own words decide.
    let none = fields(json!({}));
    assert_eq!(scores(&s, &batch("¿Cuántas manzanas tiene Tom?", &c, &none)), [0.0, 1.0, 0.0]);
    let e = s.score(&batch("42", &c, &none)).unwrap_err().to_string();
    assert!(e.contains("the prompt's language cannot be told"), "{e}");
    let fr = fields(json!({"lang": "fr"}));
    let e = s.score(&batch("q", &c, &fr)).unwrap_err().to_string();
    assert!(
        e.contains("column \"lang\": the language reward tells English (en) from Spanish (es), not \"fr\""),
        "{e}"
    );
    let s = set(json!([{"kind": "language", "field": "idioma"}]));
    let f = fields(json!({"idioma": "español"}));
    assert_eq!(scores(&s, &batch("q", &c, &f)), [0.0, 1.0, 0.0]);
    assert_eq!(detect_language("The answer is 7"), Some("en"));
    assert_eq!(detect_language("La respuesta es 7"), Some("es"));
}

#[test]
fn the_sum_is_weighted_and_each_reward_is_kept() {
    let f = fields(json!({"answer": 7, "lang": "en"}));
    let s = set(json!([
        {"kind": "numeric_match", "weight": 0.7},
        {"kind": "format", "weight": 0.2, "pattern": "Answer: \\d+$"},
        {"kind": "format", "weight": 0.1, "pattern": "^Tom"},
    ]));
    assert_eq!(s.names(), ["numeric_match", "regex", "regex_2"]);
    let out = s.score(&batch("q", &["Tom: Answer: 7", "Answer: 8", "7"], &f)).unwrap();
    assert_eq!(out.per_reward, vec![vec![1.0, 0.0, 1.0], vec![1.0, 1.0, 0.0], vec![1.0, 0.0, 0.0]]);
    let want = [0.7 + 0.2 + 0.1, 0.2, 0.7];
    for (t, w) in out.total.iter().zip(want) {
        assert!((t - w).abs() < 1e-12, "{:?}", out.total);
    }
    assert!((out.mean(0) - 2.0 / 3.0).abs() < 1e-12);
    assert!((out.std(1) - (2.0f64 / 9.0).sqrt()).abs() < 1e-12);
    assert_eq!(out.weights, [0.7, 0.2, 0.1]);
    let e = spec_err(json!([{"kind": "language", "name": "x"}, {"kind": "language", "name": "x"}]));
    assert!(e.contains("rewards[1].name: the name \"x\" is used by an earlier reward"), "{e}");
    let e = spec_err(json!([{"kind": "languge"}]));
    assert!(e.contains("rewards[0].kind: did you mean `language`? expected one of exact_match"), "{e}");
    let e = spec_err(json!([{"kind": "language", "wieght": 2}]));
    assert!(
        e.contains("rewards[0].wieght: unknown key for a language reward (did you mean `weight`?"),
        "{e}"
    );
    assert!(spec_err(json!([])).contains("rewards: expected at least one reward"));
    assert!(spec_err(json!([{"weight": 1}])).contains("rewards[0].kind: missing required key"));
}

/// Writes an executable POSIX sh script.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "#!/bin/sh\n{body}").unwrap();
    drop(f);
    path.to_str().unwrap().to_string()
}

fn command_set(argv: &[&str], extra: Value) -> RewardSet {
    let mut r = json!({"kind": "command", "name": "mine", "weight": 1.0, "command": argv});
    r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    set(json!([r]))
}

#[test]
fn a_command_reward_in_sh_and_awk_scores_the_batch_in_one_run() {
    let dir = scratch("command-sh");
    // 1 when the row's answer appears as "Answer: <answer>" in the completion, plus index / 10 (to
    // check the order); one line appended to `runs` per start.
    let sh = script(
        &dir,
        "reward.sh",
        &format!(
            "echo run >> '{}'\nawk '{{ s = 0; if (index($0, \"\\\"answer\\\":7\") > 0 && index($0, \"Answer: 7\") > 0) s = 1; \
             split($0, a, \"\\\"index\\\":\"); split(a[2], b, /[,}}]/); print s + b[1] / 10 }}'",
            dir.join("runs").display()
        ),
    );
    let s = command_set(&["sh", &sh], json!({"timeout_s": 20}));
    let f = fields(json!({"answer": 7, "lang": "en"}));
    let out = s.score(&batch("q", &["Answer: 7", "Answer: 8", "x\n\"quoted\" Answer: 7"], &f)).unwrap();
    assert_eq!(out.per_reward[0], [1.0, 0.1, 1.2]);
    assert_eq!(std::fs::read_to_string(dir.join("runs")).unwrap(), "run\n", "one start per batch");
    // The input: one JSON object per completion with the documented keys.
    let cat = script(&dir, "cat.sh", &format!("cat > '{}'\nprintf '0\\n0\\n'", dir.join("input").display()));
    command_set(&["sh", &cat], json!({})).score(&batch("the question", &["a", "b"], &f)).unwrap();
    let input = std::fs::read_to_string(dir.join("input")).unwrap();
    let lines: Vec<Value> = input.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines[1],
        json!({"prompt": "the question", "rendered_prompt": "the question", "completion": "b",
               "row": {"answer": 7, "lang": "en"}, "row_index": 11, "index": 1})
    );
    // cwd: relative paths in the command resolve there.
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    script(&sub, "one.sh", "while read -r line; do echo 1; done");
    let s = command_set(&["sh", "one.sh"], json!({"cwd": sub.to_str().unwrap()}));
    assert_eq!(s.score(&batch("q", &["a", "b"], &f)).unwrap().total, [1.0, 1.0]);
    let e = spec_err(json!([{"kind": "command", "command": ["sh"], "cwd": "/no/such/folder"}]));
    assert!(e.contains("rewards[0].cwd: /no/such/folder is not a folder"), "{e}");
    let e = spec_err(json!([{"kind": "command", "command": "sh reward.sh"}]));
    assert!(e.contains("rewards[0].command: expected a non-empty list of strings"), "{e}");
    let e = spec_err(json!([{"kind": "command", "command": []}]));
    assert!(e.contains("rewards[0].command: expected a non-empty list of strings"), "{e}");
}

#[test]
fn every_command_failure_is_a_named_error() {
    let dir = scratch("command-fail");
    let f = fields(json!({"answer": 1}));
    let two = ["a", "b"];
    let run = |body: &str, name: &str, timeout: f64| -> String {
        let sh = script(&dir, name, body);
        let s = command_set(&["sh", &sh], json!({"timeout_s": timeout}));
        match s.score(&batch("q", &two, &f)) {
            Ok(v) => panic!("{name}: expected an error, got {v:?}"),
            Err(e) => {
                assert!(matches!(e, RewardError::Command { .. }), "{e:?}");
                e.to_string()
            }
        }
    };
    let e = run("cat > /dev/null\necho 'Traceback: boom' >&2\nexit 3", "exit.sh", 20.0);
    assert!(e.starts_with("reward mine (command sh "), "{e}");
    assert!(e.contains("exited with status 3; expected status 0") && e.contains("Traceback: boom"), "{e}");
    let e = run("cat > /dev/null\necho 1", "short.sh", 20.0);
    assert!(
        e.contains("wrote 1 line on stdout for 2 completions; expected exactly one number per line"),
        "{e}"
    );
    let e = run("cat > /dev/null\nprintf '1\\n2\\n3\\n'", "long.sh", 20.0);
    assert!(e.contains("wrote 3 lines on stdout for 2 completions"), "{e}");
    let e = run("cat > /dev/null\nprintf '1\\nabc\\n'", "word.sh", 20.0);
    assert!(
        e.contains("stdout line 2 (completion 1, dataset row 11): expected a finite number, got \"abc\""),
        "{e}"
    );
    let e = run("cat > /dev/null\nprintf 'NaN\\n1\\n'", "nan.sh", 20.0);
    assert!(
        e.contains("stdout line 1 (completion 0, dataset row 10): expected a finite number, got \"NaN\""),
        "{e}"
    );
    let e = run("cat > /dev/null\nprintf '1\\ninf\\n'", "inf.sh", 20.0);
    assert!(e.contains("got \"inf\""), "{e}");
    let start = Instant::now();
    let e = run("echo 'thinking' >&2\nexec sleep 30", "slow.sh", 0.5);
    assert!(start.elapsed() < Duration::from_secs(10), "killed at the timeout: {:?}", start.elapsed());
    assert!(
        e.contains("did not finish within timeout_s = 0.5 s for a batch of 2 completions, and was killed"),
        "{e}"
    );
    assert!(e.contains("thinking"), "stderr so far is shown: {e}");
    let s = command_set(&["/no/such/program"], json!({}));
    let e = s.score(&batch("q", &two, &f)).unwrap_err().to_string();
    assert!(e.contains("reward mine (command /no/such/program): cannot start the program"), "{e}");
    // A program that never reads its input and exits 0 with the right output is fine.
    let sh = script(&dir, "noread.sh", "printf '0.5\\n0.25\\n'");
    assert_eq!(command_set(&["sh", &sh], json!({})).score(&batch("q", &two, &f)).unwrap().total, [0.5, 0.25]);
}

#[test]
fn a_command_reward_in_python() {
    let Some(python) = std::env::var_os("AFINAR_PYTHON") else {
        let _ = std::io::stderr().write_all(
            b"SKIPPED: a_command_reward_in_python: AFINAR_PYTHON is not set (any python3 will do)\n",
        );
        return;
    };
    let dir = scratch("command-python");
    let py = dir.join("reward.py");
    std::fs::write(
        &py,
        "import json, re, sys\n\
         for line in sys.stdin:\n\
         \x20   item = json.loads(line)\n\
         \x20   nums = re.findall(r'-?\\d+', item['completion'])\n\
         \x20   ok = bool(nums) and int(nums[-1]) == int(item['row']['answer'])\n\
         \x20   print(1.0 if ok else 0.0, flush=True)\n",
    )
    .unwrap();
    let s = command_set(&[python.to_str().unwrap(), py.to_str().unwrap()], json!({"timeout_s": 60}));
    let f = fields(json!({"answer": "12"}));
    assert_eq!(s.score(&batch("q", &["so 12", "13", "none"], &f)).unwrap().total, [1.0, 0.0, 0.0]);
    std::fs::write(&py, "import sys\nsys.stdin.read()\nraise ValueError('bad reward')\n").unwrap();
    let e = s.score(&batch("q", &["a"], &f)).unwrap_err().to_string();
    assert!(e.contains("exited with status 1") && e.contains("ValueError: bad reward"), "{e}");
}

const YAML: &str = "\
recipe: grpo
rewards:
  - kind: numeric_match
    weight: 0.7
  - kind: format
    weight: 0.2
    pattern: 'Answer: \\d+$'
  - kind: language
    weight: 0.1
";

#[test]
fn the_rewards_list_reads_from_yaml_with_file_line_and_column() {
    let origin = Path::new("configs/grpo.yaml");
    let s = RewardSet::from_yaml(YAML, origin).unwrap();
    assert_eq!(s.names(), ["numeric_match", "regex", "language"]);
    let err = |text: &str| RewardSet::from_yaml(text, origin).unwrap_err().to_string();
    let e = err(&YAML.replace("weight: 0.2", "wieght: 0.2"));
    assert!(e.starts_with("configs/grpo.yaml:6:5: rewards[1].wieght: unknown key for a format reward (did you mean `weight`?"), "{e}");
    let e = err(&YAML.replace("weight: 0.2", "weight: -1"));
    assert_eq!(e, "configs/grpo.yaml:6:13: rewards[1].weight: expected a number ≥ 0, got -1");
    let e = err(&YAML.replace("weight: 0.2", "weight: heavy"));
    assert_eq!(e, "configs/grpo.yaml:6:13: rewards[1].weight: expected a number ≥ 0, got \"heavy\"");
    let e = err(&YAML.replace("kind: language", "kind: lang"));
    assert!(e.starts_with("configs/grpo.yaml:8:11: rewards[2].kind: "), "{e}");
    let e = err(&YAML.replace("  - kind: language\n    weight: 0.1\n", "  - weight: 3\n"));
    assert!(e.starts_with("configs/grpo.yaml:8:5: rewards[2].kind: missing required key"), "{e}");
    let e = err(&YAML.replace("'Answer: \\d+$'", "'(a)(b'"));
    assert!(
        e.starts_with("configs/grpo.yaml:7:14: rewards[1].pattern: not a valid regular expression"),
        "{e}"
    );
    let e = err("recipe: grpo\nrewards: numeric_match\n");
    assert_eq!(e, "configs/grpo.yaml:2:10: rewards: expected a list of rewards, got \"numeric_match\"");
    let e = err("recipe: grpo\n");
    assert!(e.starts_with("configs/grpo.yaml: rewards: missing required key"), "{e}");
    let e = err("recipe: grpo\nrewards:\n  - 3\n");
    assert!(
        e.starts_with("configs/grpo.yaml:3:5: rewards[0]: expected a mapping with kind and weight, got 3"),
        "{e}"
    );
}

#[test]
fn the_arithmetic_preset_scores_answers_format_and_language() {
    let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/grpo_arith/rewards.yaml");
    let s = RewardSet::from_config_file(&preset).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.names(), ["correct", "format", "language"]);
    let weights: Vec<f64> = s.rewards().iter().map(|r| r.weight).collect();
    assert_eq!(weights, [0.7, 0.2, 0.1]);
    let en = fields(json!({"answer": 7, "lang": "en"}));
    let es = fields(json!({"answer": 7, "lang": "es"}));
    let c = [
        "Tom has 3 + 4 = 7 apples.\nAnswer: 7",
        "3 + 4 = 7\nRespuesta: 7",
        "Answer: 8",
        "The answer is 7.",
        "Answer: 7\n\nI hope this helps!",
    ];
    let close = |got: Vec<f64>, want: [f64; 5]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    };
    close(scores(&s, &batch("q", &c, &en)), [1.0, 0.9, 0.3, 0.8, 1.0]);
    close(scores(&s, &batch("q", &c, &es)), [0.9, 1.0, 0.2, 0.7, 0.9]);
    // The answer line may be bold, and need not be last; it must start its line.
    let f = ["**Answer:** 7", "So the answer: 7 apples"];
    let got = scores(&s, &batch("q", &f, &en));
    assert!((got[0] - 1.0).abs() < 1e-9 && (got[1] - 0.8).abs() < 1e-9, "{got:?}");
}

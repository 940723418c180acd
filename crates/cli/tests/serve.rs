//! `afinar serve` driven by the official `openai` Python client (the python named by
//! `AFINAR_PYTHON`, e.g. the reference venv's): chat, streaming, stop strings, two LoRA adapters,
//! concurrent requests and bad requests, with the greedy answers compared to `afinar generate`'s.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use afinar::checkpoint::{save_peft_adapter, DType, LoraAdapterConfig, TensorWrite};
use afinar::engine::{CpuBackend, WeightFormat};
use afinar::generate::Rng;
use afinar::models::{load_model, LoadOptions};
use common::{afinar, smollm2, text};

/// Kills the server when the test ends, also on a failed assertion.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A random rank-4 PEFT adapter on the projections of SmolLM2 named by `targets`.
fn write_adapter(dir: &Path, seed: u64, targets: &[&str], alpha: f64) {
    let be = CpuBackend::new(Some(1));
    let opts = LoadOptions { format: WeightFormat::F32, keep_quantized: true, ..Default::default() };
    let model = load_model(&be, &smollm2(), &opts).unwrap().model;
    let r = 4;
    let mut rng = Rng::new(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, l) in model.linears() {
        if targets.iter().any(|t| name.ends_with(t)) {
            let mut rand =
                |n: usize| (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 0.2).collect::<Vec<f32>>();
            tensors.push((format!("{name}.lora_A.weight"), vec![r, l.in_features], rand(r * l.in_features)));
            tensors.push((
                format!("{name}.lora_B.weight"),
                vec![l.out_features, r],
                rand(l.out_features * r),
            ));
        }
    }
    let writes: Vec<TensorWrite> =
        tensors.iter().map(|(n, s, v)| TensorWrite::from_f32(n, DType::F32, s.clone(), v)).collect();
    save_peft_adapter(dir, &LoraAdapterConfig::new(r, alpha, targets), &writes).unwrap();
}

/// `afinar generate`'s greedy answer (stdout less its final newline).
fn generate(model: &str, args: &[&str]) -> String {
    let mut all = vec!["generate", "--model", model, "--threads", "1"];
    all.extend_from_slice(args);
    let out = afinar(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    s.strip_suffix('\n').unwrap_or(&s).to_string()
}

#[test]
fn openai_client_against_afinar_serve() {
    let Some(python) = std::env::var_os("AFINAR_PYTHON") else {
        std::io::stderr()
            .write_all(b"SKIPPED: AFINAR_PYTHON is not set (a python with the openai package, e.g. the reference venv's)\n")
            .unwrap();
        return;
    };
    let tmp = std::env::temp_dir().join(format!("afinar-serve-openai-{}", std::process::id()));
    let (a1, a2) = (tmp.join("one"), tmp.join("two"));
    write_adapter(&a1, 1, &["q_proj", "v_proj"], 8.0);
    write_adapter(&a2, 2, &["gate_proj", "up_proj", "down_proj"], 16.0);
    let model = smollm2();
    let model = model.to_str().unwrap();
    let (prompt, text_prompt, max_tokens) =
        ("What is the capital of France?", "The three primary colors are", "20");
    let chat_for = |adapter: Option<&Path>| {
        let mut args = vec!["--chat", "--prompt", prompt, "--max-new-tokens", max_tokens];
        if let Some(a) = adapter {
            args.extend_from_slice(&["--adapter", a.to_str().unwrap()]);
        }
        generate(model, &args)
    };
    let (base, one, two) = (chat_for(None), chat_for(Some(&a1)), chat_for(Some(&a2)));
    assert!(
        base != one && one != two && base != two,
        "the adapters should change the answer: {base:?} {one:?} {two:?}"
    );
    let plain = generate(model, &["--prompt", text_prompt, "--max-new-tokens", max_tokens]);

    let child = Command::new(env!("CARGO_BIN_EXE_afinar"))
        .args(["serve", "--model", model, "--threads", "1", "--port", "0", "--served-model-name", "smollm2"])
        .args(["--adapter", &format!("one={}", a1.display()), "--adapter", &format!("two={}", a2.display())])
        .args(["--api-key", "test-key", "--max-body-bytes", "65536", "--parallel", "4", "--queue", "16"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start afinar serve");
    let mut server = Server(child);
    let mut stderr = BufReader::new(server.0.stderr.take().unwrap());
    let mut base_url = None;
    let mut seen = String::new();
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(at) = line.find("http://") {
            base_url = Some(line[at..].split_whitespace().next().unwrap().to_string());
            break;
        }
    }
    let base_url = base_url.unwrap_or_else(|| panic!("no address in the server's output: {seen}"));
    // Keep reading the server's stderr so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in stderr.lines() {});

    let cfg = serde_json::json!({
        "base_url": base_url, "api_key": "test-key", "prompt": prompt, "max_tokens": 20,
        "models": ["smollm2", "one", "two"],
        "chat": {"smollm2": base, "one": one, "two": two},
        "text_prompt": text_prompt, "text": plain, "oversize": 100 * 1024,
    });
    std::fs::create_dir_all(&tmp).unwrap();
    let cfg_path = tmp.join("cfg.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/serve_openai.py");
    let out = Command::new(python).arg(&script).arg(&cfg_path).output().expect("run python");
    let (stdout, stderr_py) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "the openai client checks failed:\n{stdout}\n{stderr_py}");
    assert!(stdout.contains("serve_openai: all checks passed"), "{stdout}");
    eprint!("{stdout}");
    assert!(server.0.try_wait().unwrap().is_none(), "the server died");
    drop(server);
    std::fs::remove_dir_all(&tmp).ok();
}

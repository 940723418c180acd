//! NF4 export (`afinar::quantize::export_bnb_nf4`, `afinar quantize --scheme nf4`): a bitsandbytes
//! Hugging Face folder that loads back with its NF4 matrices kept as they are, whose values are
//! exactly afinar's NF4 of the dtype-rounded weights, and which re-exports byte for byte; folders
//! transformers wrote (NF4, and FP4 without double quantization) load with bitsandbytes' values;
//! bad bitsandbytes folders fail with errors naming file and tensor; and, with the reference venv
//! (`AFINAR_PYTHON`), transformers + bitsandbytes load the SmolLM2 export, agree with afinar's
//! logits and write the same bytes themselves (`scripts/verify/nf4_export.py`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use afinar::blocks::PROJECTIONS;
use afinar::checkpoint::bnb::read_bnb_4bit;
use afinar::checkpoint::safetensors::SafetensorsCheckpoint;
use afinar::checkpoint::write::{save_safetensors, TensorWrite};
use afinar::checkpoint::DType;
use afinar::engine::{Backend, CpuBackend, QuantFormat, WeightFormat};
use afinar::formats::float;
use afinar::formats::nf4::{self, Nf4Ref};
use afinar::models::{load_model, LoadOptions, LoadedModel, Logits};
use afinar::quantize::{export_bnb_nf4, export_gguf, BnbExportOptions, ExportOptions, Scheme};
use common::{asset, fixture, run_verify_script, Tmp};

const NF4: WeightFormat = WeightFormat::Quant(QuantFormat::Nf4);

fn load(be: &CpuBackend, path: &Path, opts: LoadOptions) -> LoadedModel<CpuBackend> {
    load_model(be, path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kept() -> LoadOptions {
    LoadOptions { keep_quantized: true, ..Default::default() }
}

fn export(be: &CpuBackend, m: &LoadedModel<CpuBackend>, out: &Path, dtype: DType) -> u64 {
    export_bnb_nf4(be, m, out, &BnbExportOptions { dtype }, &mut |_| {})
        .unwrap_or_else(|e| panic!("export {dtype}: {e}"))
        .bytes
}

fn logits(be: &CpuBackend, m: &LoadedModel<CpuBackend>, ids: &[u32]) -> Vec<f32> {
    m.model.forward(be, ids, 1, ids.len(), None, Logits::All).unwrap()
}

fn test_ids(vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((7 + 31 * i * i + 11 * i) % vocab) as u32).collect()
}

fn round(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => v.iter().map(|&x| float::bf16_to_f32(float::f32_to_bf16(x))).collect(),
        _ => v.to_vec(),
    }
}

#[test]
fn nf4_folders_load_back_exactly_and_re_export_byte_for_byte() {
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("nf4-tiny");
    // llama31_tiny: untied output, Llama-3.1 RoPE scaling, down_proj rows of 160 (NF4 blocks
    // straddle rows: loaded dequantized); llama32_tiny: tied embeddings, every row a multiple
    // of 64 (loaded as NF4).
    for (name, dtype) in
        [("llama31_tiny", DType::BF16), ("llama32_tiny", DType::F32), ("llama32_tiny", DType::BF16)]
    {
        let what = format!("{name} {dtype}");
        let src = load(&be, &fixture(&format!("models/{name}")), LoadOptions::default());
        let out = dir.0.join(format!("{name}_{dtype}"));
        let bytes = export(&be, &src, &out, dtype);
        assert_eq!(bytes, std::fs::metadata(out.join("model.safetensors")).unwrap().len(), "{what}");
        for f in ["config.json", "generation_config.json"] {
            assert!(out.join(f).is_file(), "{what}: {f}");
        }
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        let torch = if dtype == DType::F32 { "float32" } else { "bfloat16" };
        assert_eq!(cfg["quantization_config"]["bnb_4bit_compute_dtype"], torch, "{what}");
        assert_eq!(cfg["quantization_config"]["quant_method"], "bitsandbytes", "{what}");
        assert_eq!(cfg["dtype"], torch, "{what}");

        let back = load(&be, &out, kept());
        assert_eq!(back.model.config, src.model.config, "{what}: config");
        assert_eq!(back.model.inv_freq, src.model.inv_freq, "{what}: RoPE");
        // The folder's own config has no quantization_config any more: what is saved from the
        // loaded model is plain.
        assert!(back.hf_folder.as_ref().unwrap().config_json.get("quantization_config").is_none());
        for (l, (sl, bl)) in src.model.layers.iter().zip(&back.model.layers).enumerate() {
            for (p, (s, b)) in PROJECTIONS.iter().zip(sl.projections().into_iter().zip(bl.projections())) {
                let key = format!("{what}: layer {l} {p}");
                let (rows, cols) = be.weight_shape(&s.weight);
                let n = rows * cols;
                let values = round(&be.weight_to_host(&s.weight).unwrap(), dtype);
                let want = nf4::quantize(&values, 1, n);
                let want_values = nf4::dequantize(Nf4Ref::new(&want, 1, n));
                let got = be.weight_to_host(&b.weight).unwrap();
                assert!(
                    got.iter().zip(&want_values).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{key}: values differ from afinar's NF4 of the {dtype} weights"
                );
                let expect_kept = cols.is_multiple_of(64);
                assert_eq!(be.weight_format(&b.weight) == NF4, expect_kept, "{key}: kept as NF4");
                if expect_kept {
                    let (_, data) = be.weight_quantized_data(&b.weight).unwrap().unwrap();
                    assert_eq!(data, want, "{key}: NF4 bytes");
                }
            }
        }
        // Float tensors: the dtype's rounding of the source.
        let emb = round(&be.weight_to_host(&src.model.embed).unwrap(), dtype);
        assert_eq!(be.weight_to_host(&back.model.embed).unwrap(), emb, "{what}: embedding");

        // QLoRA's load (projections NF4, nothing else kept) takes the same bytes.
        if name == "llama32_tiny" {
            let q = load(&be, &out, LoadOptions { projections: Some(NF4), ..Default::default() });
            let ids = test_ids(src.model.config.vocab_size, 16);
            let (a, b) = (logits(&be, &q, &ids), logits(&be, &back, &ids));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: QLoRA load");
            if dtype == DType::F32 {
                // The f32 export is what the loader's own NF4 quantization of the source gives.
                let qs = load(
                    &be,
                    &fixture(&format!("models/{name}")),
                    LoadOptions { projections: Some(NF4), ..Default::default() },
                );
                let c = logits(&be, &qs, &ids);
                assert!(a.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: vs source NF4");
            }
        }

        // Re-exporting the loaded folder copies the NF4 bytes: the same file (where a matrix
        // was loaded dequantized, its requantization may move a scale code: not compared).
        if name == "llama31_tiny" {
            continue;
        }
        let again = dir.0.join(format!("{name}_{dtype}_again"));
        export(&be, &back, &again, dtype);
        let (a, b) = (
            std::fs::read(out.join("model.safetensors")).unwrap(),
            std::fs::read(again.join("model.safetensors")).unwrap(),
        );
        assert!(a == b, "{what}: re-export differs");
    }
}

/// Folders transformers wrote (`scripts/fixtures/bnb_folders.py`): the NF4 one (double
/// quantization, bf16) loads as NF4, the FP4 one without double quantization is dequantized; both
/// give bitsandbytes' own dequantized values bit for bit, and re-export as afinar's NF4.
#[test]
fn transformers_bitsandbytes_folders_load_with_bitsandbytes_values() {
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("nf4-fixtures");
    for (name, kept_nf4) in [("nf4", true), ("fp4_plain", false)] {
        let folder = fixture(&format!("bnb/{name}"));
        let expected = common::Expected::open(&folder.join("expected.safetensors"));
        let m = load(&be, &folder, kept());
        let c = &m.model.config;
        assert!(!c.tie_embeddings, "{name}");
        for (l, layer) in m.model.layers.iter().enumerate() {
            for (p, lin) in PROJECTIONS.iter().zip(layer.projections()) {
                let key = format!("model.layers.{l}.{p}.weight");
                let (_, want) = expected.f32(&key);
                let got = be.weight_to_host(&lin.weight).unwrap();
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} {key}");
                assert_eq!(be.weight_format(&lin.weight) == NF4, kept_nf4, "{name} {key}");
            }
        }
        // Without keep_quantized everything is f32, with the same values.
        let f = load(&be, &folder, LoadOptions::default());
        let w = &f.model.layers[0].mlp.down;
        assert_eq!(be.weight_format(&w.weight), WeightFormat::F32);
        assert_eq!(
            be.weight_to_host(&w.weight).unwrap(),
            expected.f32("model.layers.0.mlp.down_proj.weight").1
        );
        // The NF4 folder re-exports to the same model.safetensors.
        if kept_nf4 {
            let out = dir.0.join(name);
            export(&be, &m, &out, DType::BF16);
            let (a, b) = (
                std::fs::read(folder.join("model.safetensors")).unwrap(),
                std::fs::read(out.join("model.safetensors")).unwrap(),
            );
            assert!(a == b, "{name}: afinar's re-export differs from transformers' file");
        }
    }
}

#[test]
fn nf4_export_from_gguf_writes_tokenizer_and_reports_its_size() {
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("nf4-smollm2");
    let src =
        load(&be, &asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"), LoadOptions::default());
    let out = dir.0.join("nf4");
    let bytes = export(&be, &src, &out, DType::BF16);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let c = &src.model.config;
    // 30 layers × 7 projections in NF4 (≈ 0.516 bytes per value), the 49152 × 576 embedding and
    // the norms in bf16.
    let proj = c.num_params() - c.vocab_size * c.dim - (2 * c.n_layers + 1) * c.dim;
    let expect = (proj as f64 * 0.5161) + (c.num_params() - proj) as f64 * 2.0;
    assert!((bytes as f64 / expect - 1.0).abs() < 0.01, "{bytes} bytes, expected about {expect}");
    let back = load(&be, &out, kept());
    assert_eq!(back.tokenizer.as_ref().unwrap().vocab_size(), src.tokenizer.as_ref().unwrap().vocab_size());
    let ckpt = SafetensorsCheckpoint::open(&out).unwrap();
    let w = read_bnb_4bit(&ckpt, "model.layers.0.mlp.down_proj.weight").unwrap().unwrap();
    assert_eq!(w.state.shape, [576, 1536]);
    assert_eq!(w.state.dtype, "bfloat16");
    assert_eq!(ckpt.tensor_info("model.layers.0.mlp.down_proj.weight"), Some(("U8", &[442_368usize, 1][..])));
    // GGUF has no NF4 type.
    let err = export_gguf(
        &be,
        &src,
        &dir.0.join("x.gguf"),
        &ExportOptions { scheme: Scheme::Nf4, ..Default::default() },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("GGUF has no NF4 type"), "{err}");
}

/// Rewrites `dir/model.safetensors` with `edit` applied to its tensors (name → (dtype, shape,
/// bytes)), keeping everything else.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, (String, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = BTreeMap::new();
    {
        let ckpt = SafetensorsCheckpoint::open(&path).unwrap();
        for name in ckpt.names() {
            let raw = ckpt.raw_tensor(&name).unwrap();
            tensors.insert(name.clone(), (raw.dtype.to_string(), raw.shape.to_vec(), raw.data.to_vec()));
        }
    }
    edit(&mut tensors);
    let writes: Vec<TensorWrite> = tensors
        .iter()
        .map(|(n, (d, s, b))| match d.as_str() {
            "U8" => TensorWrite::from_u8(n, s.clone(), b),
            other => TensorWrite::from_bytes(n, DType::from_name(other).unwrap(), s.clone(), b),
        })
        .collect();
    save_safetensors(&path, &writes, &BTreeMap::new()).unwrap();
}

#[test]
fn bad_bitsandbytes_folders_fail_clearly() {
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("nf4-bad");
    let src = load(&be, &fixture("models/llama32_tiny"), LoadOptions::default());
    let good = dir.0.join("good");
    export(&be, &src, &good, DType::BF16);
    let copy = |tag: &str| -> PathBuf {
        let d = dir.0.join(tag);
        std::fs::create_dir_all(&d).unwrap();
        for f in std::fs::read_dir(&good).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
        }
        d
    };
    let fails = |d: &Path, opts: LoadOptions, needles: &[&str]| {
        let err = load_model(&be, d, &opts).err().unwrap_or_else(|| panic!("{}: should fail", d.display()));
        let msg = err.to_string();
        for n in needles {
            assert!(msg.contains(n), "{}: {msg} should mention {n}", d.display());
        }
    };
    let w = "model.layers.0.self_attn.q_proj.weight";
    let state = format!("{w}.quant_state.bitsandbytes__nf4");

    let d = copy("json");
    rewrite(&d, |t| *t.get_mut(&state).unwrap() = ("U8".into(), vec![9], b"{not json".to_vec()));
    fails(&d, kept(), &[&state, "not valid JSON", "model.safetensors"]);

    let d = copy("missing");
    rewrite(&d, |t| {
        t.remove(&format!("{w}.absmax"));
    });
    fails(&d, kept(), &[&format!("{w}.absmax"), "missing"]);

    let d = copy("short");
    rewrite(&d, |t| {
        let e = t.get_mut(w).unwrap();
        e.2.truncate(e.2.len() - 2);
        e.1 = vec![e.2.len(), 1];
    });
    fails(&d, kept(), &[w, "U8"]);

    let d = copy("storage");
    rewrite(&d, |t| {
        let e = t.get_mut(w).unwrap();
        e.0 = "F16".into();
        e.1 = vec![e.2.len() / 2, 1];
    });
    fails(&d, LoadOptions::default(), &[w, "quant_storage=uint8"]);

    let d = copy("shape");
    rewrite(&d, |t| {
        let json = String::from_utf8(t[&state].2.clone()).unwrap().replace("[64, 64]", "[32, 128]");
        *t.get_mut(&state).unwrap() = ("U8".into(), vec![json.len()], json.into_bytes());
    });
    fails(&d, kept(), &[w, "[32, 128]", "the config needs"]);

    // Other quantization methods are refused by name, before any tensor is read.
    let d = copy("gptq");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(d.join("config.json"), cfg.replace("\"bitsandbytes\"", "\"gptq\"")).unwrap();
    fails(&d, kept(), &["config.json", "quantization_config", "`gptq`"]);
    let d = copy("int8");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"load_in_4bit\": true", "\"load_in_4bit\": false")
            .replace("\"load_in_8bit\": false", "\"load_in_8bit\": true"),
    )
    .unwrap();
    fails(&d, kept(), &["bitsandbytes 8-bit"]);

    // A model with an adapter is not exported as if merged; a GGUF-only dtype is refused.
    let err =
        export_bnb_nf4(&be, &src, &dir.0.join("x"), &BnbExportOptions { dtype: DType::Q8_0 }, &mut |_| {})
            .unwrap_err();
    assert!(err.to_string().contains("bf16, f16 or f32"), "{err}");
}

#[test]
fn transformers_loads_nf4_exports_and_agrees_with_afinar() {
    let Some(python) = common::reference_python("the transformers check") else { return };
    let t0 = std::time::Instant::now();
    let be = CpuBackend::new(Some(2));
    let dir = Tmp::new("nf4-transformers");
    let gguf = asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let src = load(&be, &gguf, LoadOptions::default());
    let tok = src.tokenizer.as_ref().unwrap();
    let prompts = [
        "The three primary colors are",
        "Había una vez, en un pueblo de Castilla, un molinero que",
        "<|im_start|>user\n¿Cuál es la capital de España?<|im_end|>\n<|im_start|>assistant\n",
    ];
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, false).unwrap()).collect();
    let mut exports = serde_json::Map::new();
    let mut logit_data: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (dtype, torch) in [(DType::BF16, "bfloat16"), (DType::F32, "float32")] {
        let out = dir.0.join(format!("smollm2_nf4_{torch}"));
        let bytes = export(&be, &src, &out, dtype);
        let params = src.model.config.num_params();
        eprintln!("{torch}: {bytes} bytes, {:.3} bytes per parameter", bytes as f64 / params as f64);
        let m = load(&be, &out, kept());
        for (i, p) in ids.iter().enumerate() {
            let v = logits(&be, &m, p);
            logit_data.push((format!("{torch}.{i}"), vec![p.len(), m.model.config.vocab_size], v));
        }
        exports.insert(torch.into(), out.display().to_string().into());
    }
    let logits_path = dir.0.join("afinar_logits.safetensors");
    let writes: Vec<TensorWrite> =
        logit_data.iter().map(|(n, s, v)| TensorWrite::from_f32(n, DType::F32, s.clone(), v)).collect();
    save_safetensors(&logits_path, &writes, &BTreeMap::new()).unwrap();
    let cache = std::env::var_os("AFINAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/afinar"));
    let spec = serde_json::json!({
        "gguf": gguf,
        "hf_f32": cache.join("eval/smollm2-135m-instruct-f32"),
        "exports": exports,
        "prompts": prompts.iter().zip(&ids).map(|(t, i)| serde_json::json!({"text": t, "ids": i})).collect::<Vec<_>>(),
        "logits": logits_path,
    });
    eprintln!("afinar side done in {:.1}s", t0.elapsed().as_secs_f64());
    run_verify_script(&python, "nf4_export.py", &spec, &dir.0, "transformers");
}

//! LoRA adapters in the Hugging Face PEFT layout: a folder with `adapter_model.safetensors`
//! (tensors `base_model.model.<module>.lora_A.weight` `[r, in]` and `...lora_B.weight`
//! `[out, r]`, e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`,
//! `base_model.model.lm_head.lora_B.weight`) and `adapter_config.json`, loadable by
//! `peft.PeftModel.from_pretrained` (checked against PEFT 0.21).
//!
//! The adapted weight is `W + scaling · B · A` with `scaling = lora_alpha / r`
//! (`lora_alpha / sqrt(r)` with rsLoRA): [`LoraAdapterConfig::scaling`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde_json::{Map, Value};

use crate::safetensors::SafetensorsCheckpoint;
use crate::write::{save_safetensors, write_json, TensorWrite};
use crate::{CheckpointError, Result};

/// The adapter weights' file name.
pub const ADAPTER_MODEL_FILE: &str = "adapter_model.safetensors";
/// The adapter config's file name.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The prefix PEFT puts before the base model's module names.
pub const PEFT_PREFIX: &str = "base_model.model.";
const CONFIG_FORMAT: &str = "PEFT adapter config";

/// The two matrices of a LoRA pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraPart {
    /// `lora_A`: `[r, in_features]`, applied first.
    A,
    /// `lora_B`: `[out_features, r]`.
    B,
}

/// The PEFT name of a tensor: `name` with [`PEFT_PREFIX`] in front (unchanged when it has it).
pub fn peft_tensor_name(name: &str) -> String {
    if name.starts_with(PEFT_PREFIX) {
        name.to_string()
    } else {
        format!("{PEFT_PREFIX}{name}")
    }
}

/// A tensor name without [`PEFT_PREFIX`] (unchanged when it has none).
pub fn base_tensor_name(name: &str) -> &str {
    name.strip_prefix(PEFT_PREFIX).unwrap_or(name)
}

/// Splits a LoRA tensor name, with or without [`PEFT_PREFIX`], into the base model's module name
/// and the matrix: `model.layers.0.self_attn.q_proj.lora_A.weight` →
/// `("model.layers.0.self_attn.q_proj", LoraPart::A)`. `None` for other names.
pub fn parse_lora_name(name: &str) -> Option<(&str, LoraPart)> {
    let name = base_tensor_name(name);
    if let Some(m) = name.strip_suffix(".lora_A.weight") {
        Some((m, LoraPart::A))
    } else {
        name.strip_suffix(".lora_B.weight").map(|m| (m, LoraPart::B))
    }
    .filter(|(m, _)| !m.is_empty())
}

/// Whether PEFT's list form of `target_modules` selects `module`: a key equal to the module's
/// full name or to a dotted suffix of it (`q_proj` selects `model.layers.0.self_attn.q_proj`).
pub fn targets_module(target_modules: &[String], module: &str) -> bool {
    target_modules
        .iter()
        .any(|t| module == t || module.strip_suffix(t.as_str()).is_some_and(|head| head.ends_with('.')))
}

/// The settings of a LoRA adapter, as in PEFT's `LoraConfig` (the subset afinar uses; everything
/// else read from a file is kept in [`LoraAdapterConfig::extra`]).
///
/// Only plain LoRA is represented: reading a config with DoRA, per-module rank or alpha
/// patterns, trained biases or `fan_in_fan_out` fails rather than merge wrongly, and writing
/// always sets those off.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapterConfig {
    /// The rank (rows of `lora_A`, columns of `lora_B`).
    pub r: usize,
    /// The scaling numerator (`lora_alpha`; written as an integer when it is one).
    pub lora_alpha: f64,
    /// Dropout on the LoRA input during training.
    pub lora_dropout: f64,
    /// Module names or name suffixes the adapter applies to (`["q_proj", "v_proj"]`). Empty
    /// when writing: taken from `extra["target_modules"]` if set, else from the tensor names.
    pub target_modules: Vec<String>,
    /// The base model (hub id or folder) the adapter was trained on.
    pub base_model_name_or_path: Option<String>,
    /// The base model's revision, if pinned.
    pub revision: Option<String>,
    /// PEFT's task type; `CAUSAL_LM` for afinar's models.
    pub task_type: String,
    /// rsLoRA: scale by `lora_alpha / sqrt(r)` instead of `lora_alpha / r`.
    pub use_rslora: bool,
    /// Other keys of the config, written back unchanged (below the fields above, which win).
    pub extra: Map<String, Value>,
}

impl Default for LoraAdapterConfig {
    /// PEFT's defaults: `r = 8`, `lora_alpha = 8`, no dropout, `CAUSAL_LM`.
    fn default() -> Self {
        LoraAdapterConfig {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: Vec::new(),
            base_model_name_or_path: None,
            revision: None,
            task_type: "CAUSAL_LM".into(),
            use_rslora: false,
            extra: Map::new(),
        }
    }
}

/// Keys the typed fields own (or that writing forces): not kept in `extra` when reading.
const OWNED_KEYS: [&str; 17] = [
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "base_model_name_or_path",
    "revision",
    "use_rslora",
    "use_dora",
    "bias",
    "fan_in_fan_out",
    "rank_pattern",
    "alpha_pattern",
    "inference_mode",
    "init_lora_weights",
    "peft_version",
];

impl LoraAdapterConfig {
    /// A config with rank `r`, `lora_alpha` and target modules, the rest at PEFT's defaults.
    pub fn new(r: usize, lora_alpha: f64, target_modules: &[&str]) -> Self {
        LoraAdapterConfig {
            r,
            lora_alpha,
            target_modules: target_modules.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The factor of `B · A` in the adapted weight: `lora_alpha / r`, or `lora_alpha / sqrt(r)`
    /// with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// The `adapter_config.json` object (keys sorted, as PEFT writes them).
    ///
    /// Holds what PEFT 0.21's `LoraConfig` needs to rebuild the adapter for inference:
    /// `peft_type: "LORA"`, `task_type`, `r`, `lora_alpha`, `lora_dropout`, `target_modules`
    /// (sorted), `bias: "none"`, `fan_in_fan_out: false`, `inference_mode: true`,
    /// `init_lora_weights: true`, `use_rslora`, `use_dora: false`, `modules_to_save: null`,
    /// `layers_to_transform: null`, `layers_pattern: null`, `rank_pattern: {}`,
    /// `alpha_pattern: {}`, `base_model_name_or_path`, `revision`; `extra`'s keys override the
    /// optional ones, the typed fields and the LoRA-math switches override `extra`.
    pub fn to_json(&self) -> Value {
        let mut m: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in [
            ("modules_to_save", Value::Null),
            ("layers_to_transform", Value::Null),
            ("layers_pattern", Value::Null),
            ("auto_mapping", Value::Null),
        ] {
            m.insert(k.into(), v);
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 9.0e15 {
            Value::from(self.lora_alpha as i64)
        } else {
            Value::from(self.lora_alpha)
        };
        let mut targets = self.target_modules.clone();
        targets.sort();
        targets.dedup();
        let targets = if targets.is_empty() {
            m.get("target_modules").cloned().unwrap_or(Value::Null)
        } else {
            Value::from(targets)
        };
        let opt = |s: &Option<String>| s.clone().map_or(Value::Null, Value::from);
        for (k, v) in [
            ("peft_type", Value::from("LORA")),
            ("task_type", Value::from(self.task_type.as_str())),
            ("r", Value::from(self.r)),
            ("lora_alpha", alpha),
            ("lora_dropout", Value::from(self.lora_dropout)),
            ("target_modules", targets),
            ("base_model_name_or_path", opt(&self.base_model_name_or_path)),
            ("revision", opt(&self.revision)),
            ("use_rslora", Value::from(self.use_rslora)),
            ("use_dora", Value::from(false)),
            ("bias", Value::from("none")),
            ("fan_in_fan_out", Value::from(false)),
            ("rank_pattern", Value::Object(Map::new())),
            ("alpha_pattern", Value::Object(Map::new())),
            ("inference_mode", Value::from(true)),
            ("init_lora_weights", Value::from(true)),
        ] {
            m.insert(k.into(), v);
        }
        Value::Object(m.into_iter().collect())
    }

    /// Reads an `adapter_config.json` object. Fails, saying why, on a config that is not LoRA or
    /// that uses what afinar does not merge (DoRA, rank or alpha patterns, biases,
    /// `fan_in_fan_out`).
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let obj = v.as_object().ok_or("not a JSON object")?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        match get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            Some(other) => {
                return Err(format!("peft_type is \"{other}\": only LoRA adapters (\"LORA\") are read"))
            }
            None => return Err("no \"peft_type\" string".into()),
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .and_then(|r| usize::try_from(r).ok())
            .filter(|&r| r > 0)
            .ok_or("\"r\" must be a positive integer")?;
        let lora_alpha = match get("lora_alpha") {
            None => 8.0,
            Some(a) => a.as_f64().ok_or("\"lora_alpha\" must be a number")?,
        };
        let lora_dropout = match get("lora_dropout") {
            None => 0.0,
            Some(d) => d.as_f64().ok_or("\"lora_dropout\" must be a number")?,
        };
        let mut extra = Map::new();
        let target_modules = match get("target_modules") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("\"target_modules\" must hold strings")?,
            // PEFT's regex form: kept as it is, written back unchanged.
            Some(s @ Value::String(_)) => {
                extra.insert("target_modules".into(), s.clone());
                Vec::new()
            }
            Some(_) => return Err("\"target_modules\" must be a list or a string".into()),
        };
        let string = |k: &str| -> std::result::Result<Option<String>, String> {
            match get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("\"{k}\" must be a string")),
            }
        };
        let flag = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("use_dora") {
            return Err("use_dora is true: DoRA adapters are not supported".into());
        }
        if flag("fan_in_fan_out") {
            return Err("fan_in_fan_out is true: only [out, in] weights are supported".into());
        }
        match get("bias").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(b) => return Err(format!("bias is \"{b}\": only \"none\" is supported")),
        }
        for k in ["rank_pattern", "alpha_pattern"] {
            if get(k).and_then(Value::as_object).is_some_and(|p| !p.is_empty()) {
                return Err(format!("{k} is set: per-module ranks and alphas are not supported"));
            }
        }
        for (k, v) in obj {
            if !OWNED_KEYS.contains(&k.as_str()) {
                extra.insert(k.clone(), v.clone());
            }
        }
        Ok(LoraAdapterConfig {
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            base_model_name_or_path: string("base_model_name_or_path")?,
            revision: string("revision")?,
            task_type: string("task_type")?.unwrap_or_else(|| "CAUSAL_LM".into()),
            use_rslora: flag("use_rslora"),
            extra,
        })
    }
}

/// Checks LoRA tensors against `cfg` for the file `path`: names `<module>.lora_A.weight` /
/// `.lora_B.weight` (prefixed or not), 2-D, `A = [r, in]`, `B = [out, r]`, every A with its B,
/// modules selected by `cfg.target_modules` (list form). Other names are an error unless
/// `allow_other` (a PEFT file may also hold `modules_to_save` copies or embedding base layers).
/// Returns the modules, sorted.
fn check_lora_tensors(
    path: &Path,
    cfg: &LoraAdapterConfig,
    tensors: &[(&str, &[usize])],
    allow_other: bool,
) -> Result<BTreeSet<String>> {
    let bad = |tensor: &str, message: String| CheckpointError::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        message,
    };
    let mut parts: BTreeMap<&str, [Option<&str>; 2]> = BTreeMap::new();
    for &(name, shape) in tensors {
        let Some((module, part)) = parse_lora_name(name) else {
            if allow_other {
                continue;
            }
            return Err(bad(
                name,
                "is not a LoRA tensor name (<module>.lora_A.weight or <module>.lora_B.weight)".into(),
            ));
        };
        if shape.len() != 2 {
            return Err(bad(name, format!("shape {shape:?} is not 2-D")));
        }
        let r_dim = if part == LoraPart::A { shape[0] } else { shape[1] };
        if r_dim != cfg.r {
            return Err(bad(
                name,
                format!(
                    "shape {shape:?} has rank {r_dim}, the config says r = {} (lora_A is \
                     [r, in], lora_B is [out, r])",
                    cfg.r
                ),
            ));
        }
        if !cfg.target_modules.is_empty() && !targets_module(&cfg.target_modules, module) {
            return Err(bad(
                name,
                format!(
                    "module '{module}' is not selected by target_modules {:?}: PEFT would \
                     ignore this tensor",
                    cfg.target_modules
                ),
            ));
        }
        parts.entry(module).or_default()[part as usize] = Some(name);
    }
    for (module, pair) in &parts {
        match pair {
            [Some(_), Some(_)] => {}
            [Some(name), None] => return Err(bad(name, format!("has no lora_B partner for '{module}'"))),
            [None, Some(name)] => return Err(bad(name, format!("has no lora_A partner for '{module}'"))),
            [None, None] => {}
        }
    }
    Ok(parts.keys().map(|m| m.to_string()).collect())
}

/// Writes a LoRA adapter into the folder `dir` (created if missing) as PEFT does:
/// `adapter_model.safetensors` and `adapter_config.json` ([`LoraAdapterConfig::to_json`]).
///
/// Tensor names are the base model's module names plus `.lora_A.weight` / `.lora_B.weight`
/// (`model.layers.0.self_attn.q_proj.lora_A.weight`, `lm_head.lora_B.weight`), with or without
/// [`PEFT_PREFIX`]; they are written with it. Every tensor is checked first (see
/// [`LoraAdapterConfig::r`]; pairs complete; modules selected by `target_modules`); when
/// `target_modules` is empty (and `extra` has none) it is derived from the modules' last name
/// components. Each file is written atomically (the weights first); for an all-or-nothing
/// folder call this inside [`crate::write::write_dir_atomic`].
pub fn save_peft_adapter(
    dir: impl AsRef<Path>,
    cfg: &LoraAdapterConfig,
    tensors: &[TensorWrite],
) -> Result<()> {
    let dir = dir.as_ref();
    let model_path = dir.join(ADAPTER_MODEL_FILE);
    let shapes: Vec<(&str, &[usize])> = tensors.iter().map(|t| (t.name, t.shape.as_slice())).collect();
    let modules = check_lora_tensors(&model_path, cfg, &shapes, false)?;

    let names: Vec<String> = tensors.iter().map(|t| peft_tensor_name(t.name)).collect();
    let renamed: Vec<TensorWrite> =
        tensors.iter().zip(&names).map(|(t, n)| TensorWrite { name: n, ..t.clone() }).collect();

    let mut cfg = cfg.clone();
    if cfg.target_modules.is_empty() && !cfg.extra.contains_key("target_modules") {
        cfg.target_modules = modules.iter().map(|m| m.rsplit('.').next().unwrap_or(m).to_string()).collect();
    }
    fs::create_dir_all(dir).map_err(|source| CheckpointError::Io { path: dir.to_path_buf(), source })?;
    save_safetensors(&model_path, &renamed, &BTreeMap::new())?;
    write_json(&dir.join(ADAPTER_CONFIG_FILE), &cfg.to_json())
}

/// Reads a PEFT LoRA adapter folder: its `adapter_config.json` and its memory-mapped
/// `adapter_model.safetensors` (tensor names as in the file, with [`PEFT_PREFIX`]; see
/// [`parse_lora_name`]). The LoRA tensors are checked against the config (2-D, rank `r`,
/// complete pairs); other tensors (`modules_to_save` copies, embedding base layers) are left
/// for the caller. Errors name the file and the tensor.
pub fn load_peft_adapter(dir: impl AsRef<Path>) -> Result<(LoraAdapterConfig, SafetensorsCheckpoint)> {
    let dir = dir.as_ref();
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let text =
        fs::read(&cfg_path).map_err(|source| CheckpointError::Io { path: cfg_path.clone(), source })?;
    let bad =
        |message: String| CheckpointError::Format { path: cfg_path.clone(), format: CONFIG_FORMAT, message };
    let json: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let cfg = LoraAdapterConfig::from_json(&json).map_err(bad)?;

    let model_path = dir.join(ADAPTER_MODEL_FILE);
    if !model_path.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(CheckpointError::Io {
            path: model_path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing; the folder has adapter_model.bin (pickle), which afinar does not read: \
                 convert it to safetensors",
            ),
        });
    }
    let ckpt = SafetensorsCheckpoint::open(&model_path)?;
    let names = ckpt.names();
    let shapes: Vec<(&str, &[usize])> =
        names.iter().filter_map(|n| ckpt.tensor_info(n).map(|(_, s)| (n.as_str(), s))).collect();
    // Target modules are not checked on reading: a regex or an "all-linear" config selects
    // modules that a list match would not.
    let unchecked = LoraAdapterConfig { target_modules: Vec::new(), ..cfg.clone() };
    check_lora_tensors(ckpt.path(), &unchecked, &shapes, true)?;
    Ok((cfg, ckpt))
}

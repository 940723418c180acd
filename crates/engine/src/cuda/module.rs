//! afinar's own kernels: `kernels.cu`, embedded in the binary, compiled by NVRTC for the card's
//! compute capability the first time it is needed and cached on disk as PTX (keyed by a hash of
//! the source, the architecture and the compiler options), so later runs skip the compiler.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::{EngineError, Result};

/// The CUDA C++ source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Names of the kernels in [`SOURCE`] that the backend loads.
pub const KERNELS: &[&str] = &[
    "fill_f32",
    "add_f32",
    "scale_f32",
    "f32_to_bf16_k",
    "bf16_to_f32_k",
    "f32_to_f16_k",
    "f16_to_f32_k",
    "swiglu_fwd",
    "swiglu_bwd",
    "dropout_k",
    "sum_squares_k",
    "adamw_k",
    "embedding_f32",
    "embedding_bf16",
    "embedding_bwd",
    "rmsnorm_fwd",
    "rmsnorm_bwd_dx",
    "rmsnorm_bwd_dw",
    "rope_k",
    "ce_f32",
    "ce_bf16",
    "distill_f32",
    "distill_bf16",
    "ce_rows_f32",
    "ce_rows_bf16",
    "permute_f32_bf16",
    "permute_f32_f32",
    "attn_softmax_fwd",
    "attn_softmax_bwd",
    "attn_rowdot",
    "dequant_f32",
    "dequant_bf16",
];

/// NVRTC options (besides the architecture).
const OPTIONS: &[&str] = &["-std=c++17"];

/// The loaded module and its functions, by name.
pub struct Kernels {
    _module: Arc<CudaModule>,
    funcs: Vec<(&'static str, CudaFunction)>,
}

impl Kernels {
    /// The function named `name` (one of [`KERNELS`]).
    pub fn get(&self, name: &str) -> &CudaFunction {
        &self.funcs.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("kernel {name} not loaded")).1
    }
}

/// Architecture name NVRTC takes for a compute capability (PTX for the virtual architecture, so
/// the driver finishes the compile for the exact chip).
fn arch(major: i32, minor: i32) -> Result<&'static str> {
    Ok(match (major, minor) {
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        (m, _) if m >= 10 => "compute_100",
        (m, n) if m == 8 || m == 9 => {
            if m == 9 {
                "compute_90"
            } else if n >= 9 {
                "compute_89"
            } else {
                "compute_80"
            }
        }
        (m, n) => {
            return Err(EngineError::Unsupported(format!(
                "the GPU has compute capability {m}.{n}; afinar's CUDA backend needs 8.0 (Ampere) or newer"
            )))
        }
    })
}

/// Where compiled kernels are cached: `$AFINAR_CACHE/kernels`, else `$XDG_CACHE_HOME/afinar/kernels`,
/// else `~/.cache/afinar/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("AFINAR_CACHE") {
        return Some(PathBuf::from(d).join("kernels"));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("afinar/kernels"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/afinar/kernels"))
}

/// Compiles [`SOURCE`] for `arch` to PTX (no GPU needed: NVRTC alone).
pub fn compile(arch: &'static str) -> Result<String> {
    let opts = CompileOptions {
        arch: Some(arch),
        options: OPTIONS.iter().map(|s| s.to_string()).collect(),
        name: Some("kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| {
        EngineError::Device(format!("NVRTC could not compile afinar's kernels for {arch}: {e}"))
    })?;
    Ok(ptx.to_src())
}

/// PTX for `arch`, from the disk cache or freshly compiled (and then cached, atomically).
fn ptx_for(arch: &'static str) -> Result<String> {
    let mut h = DefaultHasher::new();
    (SOURCE, arch, OPTIONS).hash(&mut h);
    let key = format!("kernels-{arch}-{:016x}.ptx", h.finish());
    let path = cache_dir().map(|d| d.join(&key));
    if let Some(p) = &path {
        if let Ok(s) = std::fs::read_to_string(p) {
            return Ok(s);
        }
    }
    let ptx = compile(arch)?;
    if let Some(p) = &path {
        // A cache is an optimisation: failing to write it is not an error.
        if let Some(dir) = p.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &ptx).is_ok() && std::fs::rename(&tmp, p).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
    }
    Ok(ptx)
}

/// Loads every kernel of [`KERNELS`] into `ctx`.
pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
    let (major, minor) = ctx.compute_capability().map_err(drv)?;
    let ptx = ptx_for(arch(major, minor)?)?;
    let module = ctx.load_module(Ptx::from_src(ptx)).map_err(drv)?;
    let mut funcs = Vec::with_capacity(KERNELS.len());
    for &name in KERNELS {
        funcs.push((name, module.load_function(name).map_err(drv)?));
    }
    Ok(Kernels { _module: module, funcs })
}

/// A driver error as an engine error.
pub fn drv(e: cudarc::driver::DriverError) -> EngineError {
    EngineError::Device(format!("CUDA driver: {e}"))
}

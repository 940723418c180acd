//! Finding the CUDA libraries at run time.
//!
//! afinar links nothing from CUDA at build time (`cudarc` with dynamic loading). Before the first
//! CUDA call, [`load`] looks for the driver (`libcuda`), cuBLAS and NVRTC: first by plain name
//! (the loader's path: `LD_LIBRARY_PATH`, the ld cache), then in the usual folders (`CUDA_HOME`,
//! `CUDA_PATH`, `/usr/local/cuda`, the driver's `/usr/local/nvidia/lib64`, the `nvidia-*` Python
//! wheels' `lib` folders). A library found in a folder is loaded by its full path and kept
//! loaded, so that `cudarc`'s own lookup by name finds the same object. When one is missing, the
//! error names it and every place searched, instead of a panic deep inside a binding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{EngineError, Result};

/// One library afinar needs, by the file names it may have.
struct Wanted {
    what: &'static str,
    names: &'static [&'static str],
}

const WANTED: &[Wanted] = &[
    Wanted { what: "the NVIDIA driver (libcuda)", names: &["libcuda.so.1", "libcuda.so"] },
    Wanted { what: "cuBLASLt", names: &["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"] },
    Wanted { what: "cuBLAS", names: &["libcublas.so.13", "libcublas.so.12", "libcublas.so"] },
    Wanted {
        what: "NVRTC's built-in headers",
        names: &["libnvrtc-builtins.so.13.0", "libnvrtc-builtins.so.12.9", "libnvrtc-builtins.so"],
    },
    Wanted {
        what: "NVRTC (the run-time CUDA compiler)",
        names: &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
    },
];

/// Folders searched after the loader's own path, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["AFINAR_CUDA_LIB", "CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(v) = std::env::var_os(var) {
            let root = PathBuf::from(v);
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
            dirs.push(root.join("targets/x86_64-linux/lib"));
            dirs.push(root.clone());
        }
    }
    if let Some(p) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    for d in [
        "/usr/local/nvidia/lib64",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(python_wheel_dirs());
    dirs.retain(|d| d.is_dir());
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// `lib` folders of the `nvidia-*` wheels (`site-packages/nvidia/*/lib`, `nvidia/cu13/lib`) in
/// the active virtual environment and the usual system locations.
fn python_wheel_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v).join("lib"));
    }
    roots.extend(["/usr/local/lib", "/usr/lib", "/opt/torch/.venv/lib"].map(PathBuf::from));
    let mut out = Vec::new();
    for root in roots {
        let Ok(pys) = std::fs::read_dir(&root) else { continue };
        for py in pys.flatten() {
            if !py.file_name().to_string_lossy().starts_with("python3") {
                continue;
            }
            for site in ["site-packages", "dist-packages"] {
                let nv = py.path().join(site).join("nvidia");
                let Ok(pkgs) = std::fs::read_dir(&nv) else { continue };
                for pkg in pkgs.flatten() {
                    out.push(pkg.path().join("lib"));
                }
            }
        }
    }
    out.sort();
    out
}

/// Where each library was found.
#[derive(Debug, Clone)]
pub struct Found {
    /// `(library, path or name it was loaded by)`.
    pub libs: Vec<(&'static str, String)>,
}

static LOADED: OnceLock<std::result::Result<Found, String>> = OnceLock::new();

/// Loads the CUDA libraries once per process (see the module docs).
pub fn load() -> Result<&'static Found> {
    LOADED.get_or_init(|| load_all(WANTED)).as_ref().map_err(|e| EngineError::Device(e.clone()))
}

/// Loads NVRTC alone (compiling kernels needs no GPU or driver).
pub fn load_nvrtc() -> Result<&'static Found> {
    static NVRTC: OnceLock<std::result::Result<Found, String>> = OnceLock::new();
    NVRTC.get_or_init(|| load_all(&WANTED[3..])).as_ref().map_err(|e| EngineError::Device(e.clone()))
}

fn load_all(wanted: &[Wanted]) -> std::result::Result<Found, String> {
    let dirs = search_dirs();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for w in wanted {
        match load_one(w, &dirs) {
            Some(how) => found.push((w.what, how)),
            None => missing.push(w),
        }
    }
    if missing.is_empty() {
        return Ok(Found { libs: found });
    }
    let list = |ws: &[&Wanted]| {
        ws.iter().map(|w| format!("{} ({})", w.what, w.names.join(" or "))).collect::<Vec<_>>().join("; ")
    };
    let searched = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(format!(
        "CUDA is not usable: could not find {}. Searched the loader's path (LD_LIBRARY_PATH, ld cache) and {}. \
         Install the NVIDIA driver and CUDA 12/13 libraries (or the nvidia-cublas / nvidia-cuda-nvrtc Python \
         wheels), or point CUDA_HOME or AFINAR_CUDA_LIB at the folder that holds them.",
        list(&missing),
        if searched.is_empty() { "no other folder (none of the usual ones exists)".into() } else { searched }
    ))
}

fn load_one(w: &Wanted, dirs: &[PathBuf]) -> Option<String> {
    for name in w.names {
        if let Some(how) = open(Path::new(name)) {
            return Some(how);
        }
    }
    for d in dirs {
        for name in w.names {
            let p = d.join(name);
            if p.is_file() {
                if let Some(how) = open(&p) {
                    return Some(how);
                }
            }
        }
    }
    None
}

/// Opens a library and keeps it loaded for the life of the process.
fn open(p: &Path) -> Option<String> {
    // SAFETY: loading a CUDA library runs its initialisers, which is what using it requires.
    let lib = unsafe { libloading::Library::new(p) }.ok()?;
    std::mem::forget(lib);
    Some(p.display().to_string())
}

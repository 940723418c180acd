//! The one place where the CPU kernels learn which instruction sets they may use.
//!
//! The features the kernels use are detected once and grouped in ordered levels
//! ([`CpuLevel`]): `portable < avx2 < avx512 < avx512_vnni < avx512_bf16 < amx`, each one
//! including everything below it. The machine's level is the highest whose features (and those
//! of every lower level) are all present. The level the kernels run at is that one, capped by the
//! environment variable [`ENV_VAR`] (`AFINAR_CPU_LEVEL=avx2`, read once per process) or, for
//! tests, by [`set_cap`]: a cap lets one machine run and benchmark every lower path.
//!
//! Every dispatch reads one atomic ([`allows`]), so a cap set at run time reaches every kernel,
//! including those that used to cache their detection. The kernels also mark the levels whose
//! code they took ([`taken_levels`]), so a test can see that a cap really changed the path.
//!
//! Not covered: the large f32 products that go to the `gemm` crate, which picks its own kernel
//! once per process (AVX-512 where present in a build with the `gemm-avx512` feature, the default;
//! else AVX2+FMA where present): [`describe`] says so when a cap is below what gemm runs
//! ([`gemm_ignores_cap`]). Off x86-64 the level is always `portable`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The environment variable that caps the level the CPU kernels run at: one of the
/// [`CpuLevel::name`]s (surrounding spaces ignored; unset or empty: no cap). A level above the
/// machine's caps nothing.
pub const ENV_VAR: &str = "AFINAR_CPU_LEVEL";

/// An ordered group of instruction-set features the CPU kernels use; each level includes the
/// features of every level below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum CpuLevel {
    /// No SIMD intrinsics: the code compiled for the build's target (the only level off x86-64).
    Portable = 0,
    /// AVX2, FMA and F16C: the 256-bit builds of the row primitives (softmax rows, SwiGLU), and
    /// the int8 GEMV of the block-quantized (Q8_0, Q4_0, Q4_1, Q4_K) weights.
    Avx2 = 1,
    /// AVX-512 F, BW and VL: the bf16/f32 GEMV, the small GEMM, the f16 attention kernels and
    /// the 512-bit builds of the row primitives.
    Avx512 = 2,
    /// AVX-512 VNNI: the 512-bit `vpdpbusd` build of that int8 GEMV.
    Avx512Vnni = 3,
    /// AVX512-BF16: the bf16 conversions that AMX needs (no kernel of its own).
    Avx512Bf16 = 4,
    /// AMX-BF16 and AMX-TILE: the bf16 tile products of large linear layers (also needs the
    /// operating system to grant the tile state, checked where AMX is used).
    Amx = 5,
}

impl CpuLevel {
    /// Every level, lowest first.
    pub const ALL: [CpuLevel; 6] = [
        CpuLevel::Portable,
        CpuLevel::Avx2,
        CpuLevel::Avx512,
        CpuLevel::Avx512Vnni,
        CpuLevel::Avx512Bf16,
        CpuLevel::Amx,
    ];

    /// The level's name, as [`ENV_VAR`] accepts it.
    pub fn name(self) -> &'static str {
        match self {
            CpuLevel::Portable => "portable",
            CpuLevel::Avx2 => "avx2",
            CpuLevel::Avx512 => "avx512",
            CpuLevel::Avx512Vnni => "avx512_vnni",
            CpuLevel::Avx512Bf16 => "avx512_bf16",
            CpuLevel::Amx => "amx",
        }
    }

    /// The CPU features this level adds to the one below it (in the names of
    /// `is_x86_feature_detected!`), for messages.
    pub fn features(self) -> &'static str {
        match self {
            CpuLevel::Portable => "nothing",
            CpuLevel::Avx2 => "avx2, fma, f16c",
            CpuLevel::Avx512 => "avx512f, avx512bw, avx512vl",
            CpuLevel::Avx512Vnni => "avx512vnni",
            CpuLevel::Avx512Bf16 => "avx512bf16",
            CpuLevel::Amx => "amx-bf16, amx-tile",
        }
    }

    /// The level named `name` (one of [`CpuLevel::name`]'s values).
    pub fn parse(name: &str) -> Option<CpuLevel> {
        CpuLevel::ALL.into_iter().find(|l| l.name() == name)
    }

    fn from_u8(v: u8) -> CpuLevel {
        CpuLevel::ALL[usize::from(v)]
    }
}

impl std::fmt::Display for CpuLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The accepted values of [`ENV_VAR`], for messages.
fn accepted() -> String {
    CpuLevel::ALL.iter().map(|l| l.name()).collect::<Vec<_>>().join(", ")
}

/// The highest level whose features (and those of every lower level) this CPU has.
#[cfg(target_arch = "x86_64")]
fn detect() -> CpuLevel {
    use std::arch::is_x86_feature_detected as has;
    let steps = [
        has!("avx2") && has!("fma") && has!("f16c"),
        has!("avx512f") && has!("avx512bw") && has!("avx512vl"),
        has!("avx512vnni"),
        has!("avx512bf16"),
        // CPUID.(EAX=7, ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
        // `cpuid` exists on every x86-64 CPU; leaf 7 is only trusted when the steps before this
        // one (AVX-512 and more, which imply leaf 7) passed.
        {
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            edx & (1 << 22) != 0 && edx & (1 << 24) != 0
        },
    ];
    let n = steps.iter().take_while(|&&ok| ok).count();
    CpuLevel::ALL[n]
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuLevel {
    CpuLevel::Portable
}

/// The machine's level (detected once).
pub fn detected() -> CpuLevel {
    static DETECTED: OnceLock<CpuLevel> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

/// The cap [`ENV_VAR`] sets (read once): `Ok(None)` when unset or empty, an error naming the
/// variable and the accepted values when it holds anything else.
pub fn env_cap() -> Result<Option<CpuLevel>, String> {
    static CAP: OnceLock<Result<Option<CpuLevel>, String>> = OnceLock::new();
    CAP.get_or_init(|| match std::env::var(ENV_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(format!("{ENV_VAR}={v:?} is not a CPU level: expected one of {}", accepted()))
        }
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => CpuLevel::parse(v.trim())
            .map(Some)
            .ok_or_else(|| format!("{ENV_VAR}={v:?} is not a CPU level: expected one of {}", accepted())),
    })
    .clone()
}

/// No level decided yet.
const UNSET: u8 = u8::MAX;
/// The level the kernels run at, as a `CpuLevel` discriminant (or `UNSET`).
static CURRENT: AtomicU8 = AtomicU8::new(UNSET);
/// The cap [`set_cap`] set, as a discriminant (or `UNSET`: the environment's).
static OVERRIDE: AtomicU8 = AtomicU8::new(UNSET);
/// One bit per level whose code a kernel took (see [`taken_levels`]).
static TAKEN: AtomicU8 = AtomicU8::new(0);

/// The cap in force: [`set_cap`]'s, else the environment's (an invalid value caps nothing
/// here; backend creation reports it).
pub fn cap() -> Option<CpuLevel> {
    match OVERRIDE.load(Ordering::Relaxed) {
        UNSET => env_cap().ok().flatten(),
        v => Some(CpuLevel::from_u8(v)),
    }
}

fn compute() -> u8 {
    let d = detected();
    cap().map_or(d, |c| c.min(d)) as u8
}

/// The level the kernels run at: the machine's, capped.
#[inline]
pub fn level() -> CpuLevel {
    let v = CURRENT.load(Ordering::Relaxed);
    if v != UNSET {
        return CpuLevel::from_u8(v);
    }
    first_level()
}

/// [`level`]'s first call: detects, reads the cap and stores the result.
#[cold]
fn first_level() -> CpuLevel {
    let v = compute();
    // A `set_cap` racing with this first call wins: it stores after reading its own cap.
    match CURRENT.compare_exchange(UNSET, v, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => CpuLevel::from_u8(v),
        Err(now) => CpuLevel::from_u8(now),
    }
}

/// Whether kernels compiled for `l` may run (the machine has it and no cap is below it).
#[inline]
pub fn allows(l: CpuLevel) -> bool {
    level() >= l
}

/// Caps the level for the whole process (`None`: back to [`ENV_VAR`]'s cap, if any), above the
/// environment's cap; returns the level the kernels now run at (never above the machine's). For
/// tests and benchmarks: kernels running on other threads at that moment may finish on either
/// path.
pub fn set_cap(cap: Option<CpuLevel>) -> CpuLevel {
    OVERRIDE.store(cap.map_or(UNSET, |c| c as u8), Ordering::Relaxed);
    let v = compute();
    CURRENT.store(v, Ordering::Relaxed);
    CpuLevel::from_u8(v)
}

/// Records that a kernel took the code of level `l` (one relaxed load once the bit is set).
#[inline]
pub(crate) fn note(l: CpuLevel) {
    let bit = 1u8 << (l as u8);
    if TAKEN.load(Ordering::Relaxed) & bit == 0 {
        TAKEN.fetch_or(bit, Ordering::Relaxed);
    }
}

/// Whether kernels compiled for `l` may run; if so, records that one is taken ([`note`]). For
/// dispatch sites that run the kernel right after asking.
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn take(l: CpuLevel) -> bool {
    let ok = allows(l);
    if ok {
        note(l);
    }
    ok
}

/// The levels whose code the per-level kernels took since the last [`reset_taken`] (lowest
/// first; `Portable` when a kernel with per-level code took its portable path). A
/// debugging/testing hook: it shows that a cap changed the path without timing anything.
pub fn taken_levels() -> Vec<CpuLevel> {
    let bits = TAKEN.load(Ordering::Relaxed);
    CpuLevel::ALL.into_iter().filter(|&l| bits & (1 << (l as u8)) != 0).collect()
}

/// Forgets the levels [`taken_levels`] reports.
pub fn reset_taken() {
    TAKEN.store(0, Ordering::Relaxed);
}

/// One line for `--version` and load lines: `avx2` or `avx2 (capped from avx512 by
/// AFINAR_CPU_LEVEL)`.
pub fn describe() -> String {
    let (l, d) = (level(), detected());
    if l == d {
        return l.name().to_string();
    }
    let by = if OVERRIDE.load(Ordering::Relaxed) != UNSET { "set_cap" } else { ENV_VAR };
    format!("{l}; capped from {d} by {by}{}", gemm_note())
}

/// `"; the gemm crate's f32 products still run at avx512"` where [`gemm_ignores_cap`], else
/// empty: the suffix that [`describe`] and `afinar --version` add to a capped level.
pub fn gemm_note() -> String {
    if gemm_ignores_cap() {
        format!("; the gemm crate's f32 products still run at {}", gemm_level())
    } else {
        String::new()
    }
}

/// Whether this build carries the `gemm` crate's AVX-512 f32 kernels (feature `gemm-avx512`).
pub const GEMM_AVX512: bool = cfg!(feature = "gemm-avx512");

/// The level of the kernel the `gemm` crate picks for itself on this CPU (it does not read the
/// cap): `avx512` in a build with [`GEMM_AVX512`] on a CPU with AVX-512F, else `avx2` (its FMA
/// kernel) where the CPU has AVX2 and FMA, else `portable`.
pub fn gemm_level() -> CpuLevel {
    let d = detected();
    if GEMM_AVX512 && d >= CpuLevel::Avx512 {
        CpuLevel::Avx512
    } else if d >= CpuLevel::Avx2 {
        CpuLevel::Avx2
    } else {
        CpuLevel::Portable
    }
}

/// Whether the large f32 products (the `gemm` crate) run above the level in force.
pub fn gemm_ignores_cap() -> bool {
    level() < gemm_level()
}

/// Checks [`ENV_VAR`]: the error names the variable and the accepted values.
pub fn check_env() -> Result<(), String> {
    env_cap().map(|_| ())
}

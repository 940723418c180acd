//! afinar's engine: the [`Backend`] interface that model code is written against, and its
//! implementations. Every kernel comes as a forward and a backward function side by side
//! (llm.c style): there is no autograd, so the model code calls backward kernels explicitly and
//! frozen weights never get gradients.
//!
//! Conventions shared by all backends:
//! - Activations are row-major buffers of `f32` semantics (a backend may store them in a
//!   narrower type; [`Backend::to_host`] always returns `f32`).
//! - A linear layer's weight is `[out, in]` (Hugging Face layout) and computes `y = x Wᵀ`.
//! - Attention tensors are `[batch, seq, heads, head_dim]`; RoPE rotates halves
//!   `(x[i], x[i + head_dim/2])` as Hugging Face does.
//! - Backward kernels accumulate (`+=`) into parameter gradients and overwrite activation
//!   gradients unless their doc says otherwise.

pub mod backend;
mod checks;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod error;
pub mod quant;
pub mod rope;

pub use afinar_formats::IGNORE_INDEX;
pub use backend::{
    AdamW, AttnDims, Backend, DistillSpec, DistillSums, Divergence, HalfFormat, Products, QuantFormat,
    WeightFormat,
};
/// The processor's vector-feature level the CPU kernels dispatch on, and its run-time cap
/// (`AFINAR_CPU_LEVEL`): what the rest of the workspace reads instead of reaching into `cpu`.
pub use cpu::features as cpu_features;
pub use cpu::CpuBackend;
pub use cpu::{CpuWeight, CpuWeightData};
#[cfg(feature = "cuda")]
pub use cuda::CudaBackend;
pub use device::{run_on_device, DeviceJob};
pub use error::{EngineError, Result};
pub use rope::{rope_inv_freq, RopeScaling};

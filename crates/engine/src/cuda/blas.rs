//! Matrix products through cuBLAS (`cublasGemmEx` family, which runs cuBLASLt's kernels): bf16
//! operands with f32 accumulation and f32 output, or f32 operands on the tensor cores in TF32.
//!
//! Callers think row-major: `C[m, n] = α · op(A) · op(B) + β · C`, `op(A)` `[m, k]` (stored
//! `[k, m]` when `ta`), `op(B)` `[k, n]` (stored `[n, k]` when `tb`), leading dimensions in
//! elements. cuBLAS is column-major, so the call computes `Cᵀ = op(B)ᵀ · op(A)ᵀ`.

use std::ffi::c_void;

use cudarc::cublas::sys::{self, cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::CudaBlas;

use crate::{EngineError, Result};

/// Element type of a product operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dt {
    /// f32 (products in TF32 on the tensor cores).
    F32,
    /// bfloat16.
    BF16,
}

/// A device matrix operand: raw address, type and leading dimension.
#[derive(Debug, Clone, Copy)]
pub struct Operand {
    /// Device address of element (0, 0).
    pub ptr: u64,
    /// Element type.
    pub dt: Dt,
    /// Leading dimension (elements between rows, row-major).
    pub ld: usize,
}

/// Batch strides (elements) of a strided-batched product.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Number of products.
    pub count: usize,
    /// Stride of A, B and C between products.
    pub stride: (usize, usize, usize),
}

/// One product (see the module docs). `c` is f32.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    blas: &CudaBlas,
    a: Operand,
    ta: bool,
    b: Operand,
    tb: bool,
    c: Operand,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    batch: Option<Batch>,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if a.dt != b.dt || c.dt != Dt::F32 {
        return Err(EngineError::Unsupported(format!(
            "gemm: operands {:?} × {:?} → {:?} (need equal operand types and an f32 output)",
            a.dt, b.dt, c.dt
        )));
    }
    let (dtype, compute) = match a.dt {
        Dt::F32 => (cudaDataType::CUDA_R_32F, cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32),
        Dt::BF16 => (cudaDataType::CUDA_R_16BF, cublasComputeType_t::CUBLAS_COMPUTE_32F),
    };
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let int = |v: usize, what: &str| {
        i32::try_from(v).map_err(|_| EngineError::Unsupported(format!("gemm: {what} {v} exceeds 2^31")))
    };
    let (m_, n_, k_) = (int(m, "m")?, int(n, "n")?, int(k, "k")?);
    let (lda, ldb, ldc) = (int(a.ld, "lda")?, int(b.ld, "ldb")?, int(c.ld, "ldc")?);
    let algo = cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
    let (pa, pb, pc) = (a.ptr as *const c_void, b.ptr as *const c_void, c.ptr as *mut c_void);
    let alpha_p = &alpha as *const f32 as *const c_void;
    let beta_p = &beta as *const f32 as *const c_void;
    // SAFETY: the callers pass live device buffers large enough for the shapes and strides.
    let status = unsafe {
        match batch {
            None => sys::cublasGemmEx(
                *blas.handle(),
                op(tb),
                op(ta),
                n_,
                m_,
                k_,
                alpha_p,
                pb,
                dtype,
                ldb,
                pa,
                dtype,
                lda,
                beta_p,
                pc,
                cudaDataType::CUDA_R_32F,
                ldc,
                compute,
                algo,
            ),
            Some(bt) => sys::cublasGemmStridedBatchedEx(
                *blas.handle(),
                op(tb),
                op(ta),
                n_,
                m_,
                k_,
                alpha_p,
                pb,
                dtype,
                ldb,
                bt.stride.1 as i64,
                pa,
                dtype,
                lda,
                bt.stride.0 as i64,
                beta_p,
                pc,
                cudaDataType::CUDA_R_32F,
                ldc,
                bt.stride.2 as i64,
                int(bt.count, "batch")?,
                compute,
                algo,
            ),
        }
    };
    if status != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(EngineError::Device(format!(
            "cuBLAS gemm ({m}×{n}×{k}, {:?}, ta={ta}, tb={tb}, lda={}, ldb={}, ldc={}): {status:?}",
            a.dt, a.ld, b.ld, c.ld
        )));
    }
    Ok(())
}

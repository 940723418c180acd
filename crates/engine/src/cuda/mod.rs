//! The CUDA backend (cargo feature `cuda`): the same [`Backend`] interface as the CPU backend, on
//! one NVIDIA GPU (compute capability 8.0 or newer).
//!
//! * Libraries are loaded at run time ([`libs`]): nothing from CUDA is needed to build afinar.
//! * Activations are f32 buffers on the device ([`CudaBuf`]); weights are f32, bf16, GGUF blocks
//!   (Q8_0, Q4_0, Q4_1; Q4_K matrices are dequantized to bf16 at upload) or NF4 ([`CudaWeight`]).
//! * Matrix products go through cuBLAS ([`blas`]): bf16 operands with f32 accumulation when a
//!   weight is bf16 or quantized (activations are rounded to bf16 on the way in, quantized
//!   weights dequantized to bf16 one matrix at a time into a scratch buffer), TF32 on the tensor
//!   cores when both operands are f32.
//! * Every other kernel is ours ([`module`], `kernels.cu`), compiled by NVRTC at run time and
//!   cached on disk. Attention is tiled by query chunks ([`attention`]): no `q_len × kv_len`
//!   matrix beyond one chunk's scores.
//! * One stream: calls are asynchronous and ordered; only methods that return host values
//!   ([`Backend::to_host`], losses, sums) wait for the device.

pub mod attention;
pub mod blas;
pub mod distill;
pub mod libs;
pub mod module;

use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use half::bf16;

use crate::backend::AdamWScalars;
use crate::checks;
use crate::error::ensure;
use crate::{
    AdamW, AttnDims, Backend, DistillSpec, DistillSums, EngineError, HalfFormat, Products, QuantFormat,
    Result, WeightFormat,
};
use blas::{gemm, Dt, Operand};
use module::{drv, Kernels};

/// A device buffer of f32 activations.
pub struct CudaBuf {
    data: CudaSlice<f32>,
    len: usize,
}

/// A device buffer of 16-bit floats (bf16 or f16 bits).
pub struct CudaHalf {
    data: CudaSlice<u16>,
    len: usize,
    format: HalfFormat,
}

/// Storage of a [`CudaWeight`].
enum WeightData {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<u16>),
    Quant(QuantFormat, CudaSlice<u8>),
}

/// A `[rows, cols]` row-major weight matrix on the GPU.
pub struct CudaWeight {
    rows: usize,
    cols: usize,
    data: WeightData,
}

/// Reused device buffers, grown on demand.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Activations rounded to bf16 for a product.
    act: Option<CudaSlice<u16>>,
    /// A quantized weight dequantized to bf16.
    weight: Option<CudaSlice<u16>>,
    /// Logits of a chunk of rows (fused cross-entropy).
    logits: Option<CudaSlice<f32>>,
    /// Their gradient, bf16.
    dlogits: Option<CudaSlice<u16>>,
    /// Their gradient, f32 (f32 output weights).
    dlogits32: Option<CudaSlice<f32>>,
    /// Per-row losses.
    losses: Option<CudaSlice<f32>>,
    /// Attention buffers ([`attention`]).
    pub(crate) attn: attention::AttnScratch,
    /// The teacher's side of the distillation head ([`distill`]).
    distill: distill::DistillScratch,
}

/// An argument of a kernel launch.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    U64(u64),
    I64(i64),
    I32(i32),
    F32(f32),
}

impl From<u64> for Arg {
    fn from(v: u64) -> Self {
        Arg::U64(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::I64(v)
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Self {
        Arg::I32(v)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Self {
        Arg::F32(v)
    }
}

/// The CUDA backend (see the module docs).
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    scratch: Mutex<Scratch>,
    /// bitsandbytes' dynamic map, for NF4 scales.
    dmap: CudaSlice<f32>,
    name: String,
    sms: u32,
    /// Per-method device time (`AFINAR_CUDA_PROFILE=1`): name, seconds, calls.
    profile: Option<Mutex<Vec<ProfileEntry>>>,
}

/// One row of the profile: call name, seconds, calls.
type ProfileEntry = (&'static str, f64, u64);

/// Times one backend call when profiling is on: waits for the device before and after, so the
/// time is the call's own (profiling slows a run down; it is for finding where time goes).
pub(crate) struct OpTimer<'a> {
    be: &'a CudaBackend,
    name: &'static str,
    t0: Option<std::time::Instant>,
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        let (Some(t0), Some(p)) = (self.t0, &self.be.profile) else { return };
        let _ = self.be.stream.synchronize();
        let dt = t0.elapsed().as_secs_f64();
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        match p.iter_mut().find(|e| e.0 == self.name) {
            Some(e) => {
                e.1 += dt;
                e.2 += 1;
            }
            None => p.push((self.name, dt, 1)),
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let Some(p) = &self.profile else { return };
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner()).clone();
        p.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = p.iter().map(|e| e.1).sum();
        eprintln!("afinar: CUDA profile ({}; {:.3} s in backend calls)", self.name, total);
        eprintln!("  {:<24} {:>10} {:>8} {:>10} {:>6}", "call", "seconds", "calls", "ms/call", "%");
        for (name, secs, calls) in p {
            eprintln!(
                "  {:<24} {:>10.3} {:>8} {:>10.3} {:>5.1}%",
                name,
                secs,
                calls,
                secs * 1e3 / calls as f64,
                100.0 * secs / total.max(1e-12)
            );
        }
    }
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| EngineError::Unsupported(format!("{what} {v} exceeds 2^31 on the GPU")))
}

impl CudaBackend {
    /// Opens GPU `ordinal`, loads cuBLAS and compiles (or loads from the cache) the kernels.
    /// Fails with a message naming what is missing when there is no driver, library or GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        libs::load()?;
        let count = CudaContext::device_count().map_err(drv)?;
        if count <= 0 {
            return Err(EngineError::Device("CUDA: the driver sees no GPU".into()));
        }
        if ordinal >= count as usize {
            return Err(EngineError::Device(format!(
                "CUDA: device cuda:{ordinal} asked for, but the driver sees {count} GPU{}",
                if count == 1 { "" } else { "s" }
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv)?;
        // One stream: ordering is the stream's, no per-buffer events needed.
        // SAFETY: every buffer of this backend is used on its single stream only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        keep_pool_memory(&ctx)?;
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| EngineError::Device(format!("cuBLAS could not start: {e:?}")))?;
        let kernels = module::load(&ctx)?;
        let dmap = stream.clone_htod(&afinar_formats::nf4::dynamic_map()[..]).map_err(drv)?;
        let (major, minor) = ctx.compute_capability().map_err(drv)?;
        let gpu = ctx.name().map_err(drv)?;
        let sms = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv)? as u32;
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            kernels,
            scratch: Mutex::new(Scratch::default()),
            dmap,
            name: format!("cuda:{ordinal} ({gpu}, sm_{major}{minor})"),
            sms,
            profile: std::env::var("AFINAR_CUDA_PROFILE")
                .is_ok_and(|v| v == "1")
                .then(|| Mutex::new(Vec::new())),
        })
    }

    /// Waits until every queued kernel has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv)
    }

    /// Highest number of bytes the backend's buffers have held at once (the stream-ordered
    /// allocator's high-water mark, like PyTorch's `max_memory_allocated`).
    pub fn peak_allocated(&self) -> Result<u64> {
        use cudarc::driver::sys;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut v: u64 = 0;
        // SAFETY: plain queries on the device's default pool with valid out-pointers.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device()).result().map_err(drv)?;
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut v as *mut u64 as *mut std::ffi::c_void,
            )
            .result()
            .map_err(drv)?;
        }
        Ok(v)
    }

    pub(crate) fn timer(&self, name: &'static str) -> OpTimer<'_> {
        let t0 = self.profile.as_ref().map(|_| {
            let _ = self.stream.synchronize();
            std::time::Instant::now()
        });
        OpTimer { be: self, name, t0 }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    pub(crate) fn bptr(&self, b: &CudaBuf) -> u64 {
        self.ptr(&b.data)
    }

    /// Launches kernel `name` with `args` (device addresses as `u64`).
    pub(crate) fn launch(&self, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let f = self.kernels.get(name);
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::U64(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        // SAFETY: each kernel's parameter list in kernels.cu matches the arguments its caller
        // passes, and every address points into a live buffer large enough for the sizes given.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(drv)
    }

    /// A grid-stride launch over `n` elements.
    pub(crate) fn elems(&self, n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, self.sms as usize * 16) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }

    /// One block of `threads` per row.
    pub(crate) fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
        LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
    }

    /// One warp per row, 8 warps per block.
    pub(crate) fn warps_cfg(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// A growable scratch buffer of at least `len` elements.
    pub(crate) fn grow<'a, T: DeviceRepr + ValidAsZeroBits>(
        &self,
        slot: &'a mut Option<CudaSlice<T>>,
        len: usize,
    ) -> Result<&'a mut CudaSlice<T>> {
        if slot.as_ref().is_none_or(|s| s.len() < len) {
            *slot = None;
            *slot = Some(self.stream.alloc_zeros::<T>(len.max(1)).map_err(|e| self.oom(e, len, 4))?);
        }
        Ok(slot.as_mut().expect("just set"))
    }

    fn oom(&self, e: cudarc::driver::DriverError, len: usize, size: usize) -> EngineError {
        if format!("{e:?}").contains("OUT_OF_MEMORY") {
            EngineError::OutOfMemory { bytes: len * size, device: self.name.clone() }
        } else {
            drv(e)
        }
    }

    /// A Q4_K matrix (`blocks`, size already checked) as this backend stores it: there is no
    /// device kernel for Q4_K's super-blocks, so it is dequantized on the host (bit-exact with
    /// GGUF's reference) and uploaded as bf16, the precision every quantized weight's products
    /// already use here (quantized weights are dequantized to bf16 for cuBLAS). Such a weight
    /// reports [`WeightFormat::BF16`], and embedding lookups and [`Backend::weight_to_host`] see
    /// its values rounded to bf16.
    fn q4k_weight(&self, blocks: &[u8], rows: usize, cols: usize) -> Result<CudaWeight> {
        let values = crate::quant::dequantize(QuantFormat::Q4_K, blocks, rows, cols)?;
        let h: Vec<u16> = values.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
        let d = self.stream.clone_htod(&h[..]).map_err(|e| self.oom(e, h.len(), 2))?;
        Ok(CudaWeight { rows, cols, data: WeightData::BF16(d) })
    }

    /// Uploads host index data (token ids, positions, targets).
    pub(crate) fn upload<T: DeviceRepr + ValidAsZeroBits>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return self.stream.alloc_zeros::<T>(1).map_err(drv);
        }
        self.stream.clone_htod(data).map_err(drv)
    }

    /// `dst[..n] = bf16(src[..n])` for a device address `src`.
    pub(crate) fn to_bf16(&self, src: u64, dst: u64, n: usize) -> Result<()> {
        self.convert("f32_to_bf16_k", src, dst, n)
    }

    /// Runs the elementwise conversion `kernel` over `n` values from device address `src` to
    /// `dst`.
    fn convert(&self, kernel: &str, src: u64, dst: u64, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.launch(kernel, self.elems(n), &[src.into(), dst.into(), (n as i64).into()])
    }

    /// An f32 activation matrix as a product operand of type `dt` (rounded to bf16 into
    /// `slot` when `dt` is bf16).
    pub(crate) fn act_operand(
        &self,
        src: u64,
        n: usize,
        ld: usize,
        dt: Dt,
        slot: &mut Option<CudaSlice<u16>>,
    ) -> Result<Operand> {
        match dt {
            Dt::F32 => Ok(Operand { ptr: src, dt, ld }),
            Dt::BF16 => {
                let s = self.grow(slot, n)?;
                let p = self.ptr(s);
                self.to_bf16(src, p, n)?;
                Ok(Operand { ptr: p, dt, ld })
            }
        }
    }

    /// A weight as a product operand (quantized ones dequantized to bf16 into `slot`).
    fn weight_operand(&self, w: &CudaWeight, slot: &mut Option<CudaSlice<u16>>) -> Result<Operand> {
        let ld = w.cols;
        Ok(match &w.data {
            WeightData::F32(d) => Operand { ptr: self.ptr(d), dt: Dt::F32, ld },
            WeightData::BF16(d) => Operand { ptr: self.ptr(d), dt: Dt::BF16, ld },
            WeightData::Quant(format, d) => {
                let n = w.rows * w.cols;
                let s = self.grow(slot, n)?;
                let out = self.ptr(s);
                self.dequant("dequant_bf16", *format, d, w, None, 0, w.rows, out)?;
                Operand { ptr: out, dt: Dt::BF16, ld }
            }
        })
    }

    /// Dequantizes rows of a quantized weight (`ids`, or `n_rows` rows from `row0`) into `out`.
    #[allow(clippy::too_many_arguments)]
    fn dequant(
        &self,
        kernel: &str,
        format: QuantFormat,
        blocks: &CudaSlice<u8>,
        w: &CudaWeight,
        ids: Option<u64>,
        row0: usize,
        n_rows: usize,
        out: u64,
    ) -> Result<()> {
        let fmt: i32 = match format {
            QuantFormat::Q8_0 => 0,
            QuantFormat::Q4_0 => 1,
            QuantFormat::Q4_1 => 2,
            QuantFormat::Nf4 => 3,
            // Never stored quantized here (see `CudaBackend::q4k_weight`).
            QuantFormat::Q4_K => {
                return Err(EngineError::Unsupported(
                    "q4_k weights have no CUDA dequantization kernel (they are stored as bf16)".into(),
                ))
            }
        };
        let n = n_rows * w.cols;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            kernel,
            self.elems(n),
            &[
                self.ptr(blocks).into(),
                fmt.into(),
                ((w.rows * w.cols) as i64).into(),
                self.ptr(&self.dmap).into(),
                ids.unwrap_or(0).into(),
                (row0 as i64).into(),
                int(n_rows, "rows")?.into(),
                int(w.cols, "cols")?.into(),
                out.into(),
            ],
        )
    }

    fn dtoh<T: DeviceRepr + Default + Clone>(&self, s: &CudaSlice<T>) -> Result<Vec<T>> {
        let mut v = vec![T::default(); s.len()];
        self.stream.memcpy_dtoh(s, &mut v[..]).map_err(drv)?;
        self.stream.synchronize().map_err(drv)?;
        Ok(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        a: Operand,
        ta: bool,
        b: Operand,
        tb: bool,
        c: u64,
        ldc: usize,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)?;
        gemm(&self.blas, a, ta, b, tb, Operand { ptr: c, dt: Dt::F32, ld: ldc }, m, n, k, alpha, beta, None)
    }

    /// `y (+)= x · Wᵀ` (`transposed`, a linear layer) or `y (+)= x · W` (its input gradient).
    #[allow(clippy::too_many_arguments)]
    fn weight_product(
        &self,
        op: &'static str,
        x: &CudaBuf,
        w: &CudaWeight,
        y: &mut CudaBuf,
        rows: usize,
        accumulate: bool,
        transposed: bool,
    ) -> Result<()> {
        let (k, n) = if transposed { (w.cols, w.rows) } else { (w.rows, w.cols) };
        let names = if transposed { ("x", "y") } else { ("dy", "dx") };
        checks::product(op, (names.0, x.len), (names.1, y.len), rows, k, n)?;
        if rows == 0 {
            return Ok(());
        }
        let mut sc = self.lock();
        let sc = &mut *sc;
        let wop = self.weight_operand(w, &mut sc.weight)?;
        let xop = self.act_operand(self.bptr(x), rows * k, k, wop.dt, &mut sc.act)?;
        let beta = if accumulate { 1.0 } else { 0.0 };
        self.product(xop, false, wop, transposed, self.bptr(y), n, rows, n, k, 1.0, beta)
    }

    pub(crate) fn blas(&self) -> &CudaBlas {
        &self.blas
    }
}

/// Keeps freed memory in the default pool instead of returning it to the driver at every
/// synchronisation (what a caching allocator does), so buffers allocated per step are cheap.
fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<()> {
    use cudarc::driver::sys;
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: valid out-pointer and attribute value.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result().map_err(drv)?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .map_err(drv)?;
    }
    Ok(())
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Weight = CudaWeight;
    type Half = CudaHalf;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn peak_memory(&self) -> Option<u64> {
        self.peak_allocated().ok()
    }

    // ---- memory -------------------------------------------------------------------------------

    fn zeros(&self, len: usize) -> Result<CudaBuf> {
        let _t = self.timer("zeros");
        let data = self.stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| self.oom(e, len, 4))?;
        Ok(CudaBuf { data, len })
    }

    fn from_host(&self, data: &[f32]) -> Result<CudaBuf> {
        let _t = self.timer("from_host");
        if data.is_empty() {
            return self.zeros(0);
        }
        let d = self.stream.clone_htod(data).map_err(|e| self.oom(e, data.len(), 4))?;
        Ok(CudaBuf { data: d, len: data.len() })
    }

    fn to_host(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        let _t = self.timer("to_host");
        let mut v = self.dtoh(&buf.data)?;
        v.truncate(buf.len);
        Ok(v)
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn copy(&self, src: &CudaBuf, src_off: usize, dst: &mut CudaBuf, dst_off: usize, n: usize) -> Result<()> {
        let _t = self.timer("copy");
        checks::ranges("copy", src.len, src_off, dst.len, dst_off, n)?;
        if n == 0 {
            return Ok(());
        }
        let (s, d) = (self.bptr(src) + 4 * src_off as u64, self.bptr(dst) + 4 * dst_off as u64);
        // SAFETY: both ranges were checked against the buffers' lengths.
        unsafe { cudarc::driver::result::memcpy_dtod_async(d, s, 4 * n, self.stream.cu_stream()) }
            .map_err(drv)
    }

    fn fill(&self, buf: &mut CudaBuf, n: usize, value: f32) -> Result<()> {
        let _t = self.timer("fill");
        checks::need("fill", "buf", buf.len, n)?;
        if n == 0 {
            return Ok(());
        }
        self.launch("fill_f32", self.elems(n), &[self.bptr(buf).into(), (n as i64).into(), value.into()])
    }

    fn zeros_half(&self, len: usize, format: HalfFormat) -> Result<CudaHalf> {
        let _t = self.timer("zeros_half");
        let data = self.stream.alloc_zeros::<u16>(len.max(1)).map_err(|e| self.oom(e, len, 2))?;
        Ok(CudaHalf { data, len, format })
    }

    fn half_shape(&self, buf: &CudaHalf) -> (usize, HalfFormat) {
        (buf.len, buf.format)
    }

    fn to_half(
        &self,
        src: &CudaBuf,
        src_off: usize,
        dst: &mut CudaHalf,
        dst_off: usize,
        n: usize,
    ) -> Result<()> {
        let _t = self.timer("to_half");
        checks::ranges("to_half", src.len, src_off, dst.len, dst_off, n)?;
        let kernel = match dst.format {
            HalfFormat::Bf16 => "f32_to_bf16_k",
            HalfFormat::F16 => "f32_to_f16_k",
        };
        let (s, d) = (self.bptr(src) + 4 * src_off as u64, self.ptr(&dst.data) + 2 * dst_off as u64);
        self.convert(kernel, s, d, n)
    }

    fn from_half(
        &self,
        src: &CudaHalf,
        src_off: usize,
        dst: &mut CudaBuf,
        dst_off: usize,
        n: usize,
    ) -> Result<()> {
        let _t = self.timer("from_half");
        checks::ranges("from_half", src.len, src_off, dst.len, dst_off, n)?;
        let kernel = match src.format {
            HalfFormat::Bf16 => "bf16_to_f32_k",
            HalfFormat::F16 => "f16_to_f32_k",
        };
        let (s, d) = (self.ptr(&src.data) + 2 * src_off as u64, self.bptr(dst) + 4 * dst_off as u64);
        self.convert(kernel, s, d, n)
    }

    fn weight(&self, data: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<CudaWeight> {
        let _t = self.timer("weight");
        let n = checks::mul("weight", &[rows, cols])?;
        ensure(data.len() == n, "weight", || format!("{} values for a [{rows}, {cols}] weight", data.len()))?;
        let up = |e| self.oom(e, n, 4);
        let data = match format {
            WeightFormat::F32 => WeightData::F32(self.stream.clone_htod(data).map_err(up)?),
            WeightFormat::BF16 => {
                let h: Vec<u16> = data.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
                WeightData::BF16(self.stream.clone_htod(&h[..]).map_err(up)?)
            }
            WeightFormat::Quant(QuantFormat::Q4_K) => {
                let blocks = crate::quant::quantize(QuantFormat::Q4_K, data, rows, cols)?;
                return self.q4k_weight(&blocks, rows, cols);
            }
            WeightFormat::Quant(q) => {
                let blocks = crate::quant::quantize(q, data, rows, cols)?;
                WeightData::Quant(q, self.stream.clone_htod(&blocks[..]).map_err(up)?)
            }
        };
        Ok(CudaWeight { rows, cols, data })
    }

    fn weight_quantized(
        &self,
        blocks: &[u8],
        format: QuantFormat,
        rows: usize,
        cols: usize,
    ) -> Result<CudaWeight> {
        let _t = self.timer("weight_quantized");
        let want = crate::quant::check_quant_len(format, rows, cols, blocks.len())?;
        if format == QuantFormat::Q4_K {
            return self.q4k_weight(blocks, rows, cols);
        }
        let d = self.stream.clone_htod(blocks).map_err(|e| self.oom(e, want, 1))?;
        Ok(CudaWeight { rows, cols, data: WeightData::Quant(format, d) })
    }

    fn weight_shape(&self, w: &CudaWeight) -> (usize, usize) {
        (w.rows, w.cols)
    }

    fn weight_format(&self, w: &CudaWeight) -> WeightFormat {
        match &w.data {
            WeightData::F32(_) => WeightFormat::F32,
            WeightData::BF16(_) => WeightFormat::BF16,
            WeightData::Quant(q, _) => WeightFormat::Quant(*q),
        }
    }

    fn weight_to_host(&self, w: &CudaWeight) -> Result<Vec<f32>> {
        let _t = self.timer("weight_to_host");
        match &w.data {
            WeightData::F32(d) => self.dtoh(d),
            WeightData::BF16(d) => {
                Ok(self.dtoh(d)?.into_iter().map(|h| bf16::from_bits(h).to_f32()).collect())
            }
            WeightData::Quant(format, d) => crate::quant::dequantize(*format, &self.dtoh(d)?, w.rows, w.cols),
        }
    }

    fn weight_quantized_data(&self, w: &CudaWeight) -> Result<Option<(QuantFormat, Vec<u8>)>> {
        let _t = self.timer("weight_quantized_data");
        Ok(match &w.data {
            WeightData::Quant(format, d) => Some((*format, self.dtoh(d)?)),
            _ => None,
        })
    }

    // ---- matrix products ----------------------------------------------------------------------

    fn linear(
        &self,
        x: &CudaBuf,
        w: &CudaWeight,
        y: &mut CudaBuf,
        rows: usize,
        accumulate: bool,
    ) -> Result<()> {
        let _t = self.timer("linear");
        self.weight_product("linear", x, w, y, rows, accumulate, true)
    }

    fn linear_backward_input(
        &self,
        dy: &CudaBuf,
        w: &CudaWeight,
        dx: &mut CudaBuf,
        rows: usize,
        accumulate: bool,
    ) -> Result<()> {
        let _t = self.timer("linear_backward_input");
        self.weight_product("linear_backward_input", dy, w, dx, rows, accumulate, false)
    }

    fn linear_backward_weight(
        &self,
        dy: &CudaBuf,
        x: &CudaBuf,
        dw: &mut CudaBuf,
        rows: usize,
        out: usize,
        inp: usize,
        _products: Products,
        accumulate: bool,
    ) -> Result<()> {
        let _t = self.timer("linear_backward_weight");
        // f32 operands in TF32 on the tensor cores for either precision: the rounding bf16
        // products would add buys no speed here (see `Products`).
        if rows == 0 && !accumulate {
            checks::matmul(dy.len, x.len, dw.len, out, inp, rows)?;
            return self.fill(dw, out * inp, 0.0);
        }
        let beta = if accumulate { 1.0 } else { 0.0 };
        self.matmul(dy, true, x, false, dw, out, inp, rows, 1.0, beta)
    }

    fn matmul(
        &self,
        a: &CudaBuf,
        ta: bool,
        b: &CudaBuf,
        tb: bool,
        c: &mut CudaBuf,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let _t = self.timer("matmul");
        checks::matmul(a.len, b.len, c.len, m, n, k)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return self.scale(c, m * n, beta);
        }
        let aop = Operand { ptr: self.bptr(a), dt: Dt::F32, ld: if ta { m } else { k } };
        let bop = Operand { ptr: self.bptr(b), dt: Dt::F32, ld: if tb { k } else { n } };
        self.product(aop, ta, bop, tb, self.bptr(c), n, m, n, k, alpha, beta)
    }

    // ---- elementwise --------------------------------------------------------------------------

    fn add_assign(&self, y: &mut CudaBuf, x: &CudaBuf, n: usize) -> Result<()> {
        let _t = self.timer("add_assign");
        checks::each("add_assign", n, &[("y", y.len), ("x", x.len)])?;
        if n == 0 {
            return Ok(());
        }
        self.launch("add_f32", self.elems(n), &[self.bptr(y).into(), self.bptr(x).into(), (n as i64).into()])
    }

    fn scale(&self, y: &mut CudaBuf, n: usize, s: f32) -> Result<()> {
        let _t = self.timer("scale");
        checks::need("scale", "y", y.len, n)?;
        if n == 0 {
            return Ok(());
        }
        self.launch("scale_f32", self.elems(n), &[self.bptr(y).into(), (n as i64).into(), s.into()])
    }

    // ---- layers -------------------------------------------------------------------------------

    fn embedding(&self, ids: &[u32], table: &CudaWeight, out: &mut CudaBuf) -> Result<()> {
        let _t = self.timer("embedding");
        let (vocab, dim) = (table.rows, table.cols);
        checks::embedding(ids, vocab, dim, out.len)?;
        if ids.is_empty() || dim == 0 {
            return Ok(());
        }
        let d_ids = self.upload(ids)?;
        let n = int(ids.len(), "ids")?;
        let cfg = Self::rows_cfg(ids.len(), 256);
        let (i, o) = (self.ptr(&d_ids), self.bptr(out));
        match &table.data {
            WeightData::F32(t) => self.launch(
                "embedding_f32",
                cfg,
                &[i.into(), self.ptr(t).into(), o.into(), n.into(), int(dim, "dim")?.into()],
            ),
            WeightData::BF16(t) => self.launch(
                "embedding_bf16",
                cfg,
                &[i.into(), self.ptr(t).into(), o.into(), n.into(), int(dim, "dim")?.into()],
            ),
            WeightData::Quant(format, t) => {
                self.dequant("dequant_f32", *format, t, table, Some(i), 0, ids.len(), o)
            }
        }
    }

    fn embedding_backward(
        &self,
        ids: &[u32],
        dout: &CudaBuf,
        dtable: &mut CudaBuf,
        dim: usize,
    ) -> Result<()> {
        let _t = self.timer("embedding_backward");
        checks::embedding_backward(ids, dout.len, dtable.len, dim)?;
        if ids.is_empty() {
            return Ok(());
        }
        let d_ids = self.upload(ids)?;
        self.launch(
            "embedding_bwd",
            Self::rows_cfg(ids.len(), 256),
            &[
                self.ptr(&d_ids).into(),
                self.bptr(dout).into(),
                self.bptr(dtable).into(),
                int(ids.len(), "ids")?.into(),
                int(dim, "dim")?.into(),
            ],
        )
    }

    fn rmsnorm(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        out: &mut CudaBuf,
        rstd: &mut CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let _t = self.timer("rmsnorm");
        checks::rmsnorm(x.len, w.len, out.len, rstd.len, rows, dim)?;
        if rows == 0 {
            return Ok(());
        }
        self.launch(
            "rmsnorm_fwd",
            Self::rows_cfg(rows, 256),
            &[
                self.bptr(x).into(),
                self.bptr(w).into(),
                self.bptr(out).into(),
                self.bptr(rstd).into(),
                int(rows, "rows")?.into(),
                int(dim, "dim")?.into(),
                eps.into(),
            ],
        )
    }

    fn rmsnorm_backward(
        &self,
        dout: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        rstd: &CudaBuf,
        dx: &mut CudaBuf,
        dw: Option<&mut CudaBuf>,
        rows: usize,
        dim: usize,
        accumulate: bool,
    ) -> Result<()> {
        let _t = self.timer("rmsnorm_backward");
        let dw_len = dw.as_deref().map(|d| d.len);
        checks::rmsnorm_backward(dout.len, x.len, w.len, rstd.len, dx.len, dw_len, rows, dim)?;
        if rows == 0 {
            return Ok(());
        }
        let (r, d) = (int(rows, "rows")?, int(dim, "dim")?);
        self.launch(
            "rmsnorm_bwd_dx",
            Self::rows_cfg(rows, 256),
            &[
                self.bptr(dout).into(),
                self.bptr(x).into(),
                self.bptr(w).into(),
                self.bptr(rstd).into(),
                self.bptr(dx).into(),
                r.into(),
                d.into(),
                (accumulate as i32).into(),
            ],
        )?;
        if let Some(dw) = dw {
            let rows_per = 64usize;
            let cfg = LaunchConfig {
                grid_dim: (dim.div_ceil(256) as u32, rows.div_ceil(rows_per) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            self.launch(
                "rmsnorm_bwd_dw",
                cfg,
                &[
                    self.bptr(dout).into(),
                    self.bptr(x).into(),
                    self.bptr(rstd).into(),
                    self.bptr(dw).into(),
                    r.into(),
                    d.into(),
                    (rows_per as i32).into(),
                ],
            )?;
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CudaBuf,
        positions: &[u32],
        inv_freq: &[f32],
        tokens: usize,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    ) -> Result<()> {
        let _t = self.timer("rope");
        checks::rope(x.len, positions.len(), inv_freq.len(), tokens, heads, head_dim)?;
        let n = tokens * heads * (head_dim / 2);
        if n == 0 {
            return Ok(());
        }
        let p = self.upload(&positions[..tokens])?;
        let f = self.upload(&inv_freq[..head_dim / 2])?;
        self.launch(
            "rope_k",
            self.elems(n),
            &[
                self.bptr(x).into(),
                self.ptr(&p).into(),
                self.ptr(&f).into(),
                int(tokens, "tokens")?.into(),
                int(heads, "heads")?.into(),
                int(head_dim, "head_dim")?.into(),
                (inverse as i32).into(),
            ],
        )
    }

    fn swiglu(&self, gate: &CudaBuf, up: &CudaBuf, out: &mut CudaBuf, n: usize) -> Result<()> {
        let _t = self.timer("swiglu");
        checks::each("swiglu", n, &[("gate", gate.len), ("up", up.len), ("out", out.len)])?;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            "swiglu_fwd",
            self.elems(n),
            &[self.bptr(gate).into(), self.bptr(up).into(), self.bptr(out).into(), (n as i64).into()],
        )
    }

    fn swiglu_backward(
        &self,
        dout: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        n: usize,
    ) -> Result<()> {
        let _t = self.timer("swiglu_backward");
        checks::each("swiglu_backward", n, &[("dout", dout.len), ("gate", gate.len), ("up", up.len)])?;
        checks::each("swiglu_backward", n, &[("dgate", dgate.len), ("dup", dup.len)])?;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            "swiglu_bwd",
            self.elems(n),
            &[
                self.bptr(dout).into(),
                self.bptr(gate).into(),
                self.bptr(up).into(),
                self.bptr(dgate).into(),
                self.bptr(dup).into(),
                (n as i64).into(),
            ],
        )
    }

    fn attention(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        dims: &AttnDims,
        doc_ids: Option<&[u32]>,
    ) -> Result<()> {
        let _t = self.timer("attention");
        attention::forward(self, q, k, v, out, lse, dims, doc_ids)
    }

    fn attention_backward(
        &self,
        dout: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dims: &AttnDims,
        doc_ids: Option<&[u32]>,
    ) -> Result<()> {
        let _t = self.timer("attention_backward");
        attention::backward(self, dout, q, k, v, out, lse, dq, dk, dv, dims, doc_ids)
    }

    fn cross_entropy(
        &self,
        logits: &CudaBuf,
        targets: &[i32],
        losses: &mut CudaBuf,
        dlogits: Option<&mut CudaBuf>,
        rows: usize,
        vocab: usize,
        grad_scale: f32,
    ) -> Result<()> {
        let _t = self.timer("cross_entropy");
        let dlogits_len = dlogits.as_deref().map(|d| d.len);
        checks::cross_entropy(logits.len, targets, losses.len, dlogits_len, rows, vocab)?;
        if rows == 0 {
            return Ok(());
        }
        let dl = match dlogits {
            Some(d) => self.bptr(d),
            None => 0,
        };
        let t = self.upload(&targets[..rows])?;
        self.launch(
            "ce_f32",
            Self::rows_cfg(rows, 1024),
            &[
                self.bptr(logits).into(),
                self.ptr(&t).into(),
                self.bptr(losses).into(),
                dl.into(),
                int(rows, "rows")?.into(),
                int(vocab, "vocab")?.into(),
                grad_scale.into(),
            ],
        )
    }

    fn linear_cross_entropy(
        &self,
        h: &CudaBuf,
        w: &CudaWeight,
        targets: &[i32],
        rows: usize,
        grad_scale: f32,
        dh: Option<&mut CudaBuf>,
        dw: Option<&mut CudaBuf>,
    ) -> Result<(f64, usize)> {
        let _t = self.timer("linear_cross_entropy");
        let l = self.fused_cross_entropy(h, w, targets, rows, FusedScale::Uniform(grad_scale), dh, dw)?;
        let kept = l.iter().zip(&targets[..rows]).filter(|(_, &t)| t != afinar_formats::IGNORE_INDEX);
        let (sum, count) = kept.fold((0.0, 0), |(s, c), (&v, _)| (s + v as f64, c + 1));
        Ok((sum, count))
    }

    fn linear_distill(
        &self,
        hs: &CudaBuf,
        ws: &CudaWeight,
        ht: &CudaBuf,
        wt: &CudaWeight,
        targets: &[i32],
        rows: usize,
        spec: &DistillSpec,
        dh: Option<&mut CudaBuf>,
        dw: Option<&mut CudaBuf>,
    ) -> Result<DistillSums> {
        let _t = self.timer("linear_distill");
        distill::linear_distill(self, hs, ws, ht, wt, targets, rows, spec, dh, dw)
    }

    fn linear_log_probs(
        &self,
        h: &CudaBuf,
        w: &CudaWeight,
        targets: &[i32],
        rows: usize,
    ) -> Result<Vec<f32>> {
        let _t = self.timer("linear_log_probs");
        let l = self.fused_cross_entropy(h, w, targets, rows, FusedScale::Uniform(0.0), None, None)?;
        Ok(l.into_iter().map(|v| -v).collect())
    }

    fn linear_log_probs_backward(
        &self,
        h: &CudaBuf,
        w: &CudaWeight,
        targets: &[i32],
        rows: usize,
        upstream: &[f32],
        dh: Option<&mut CudaBuf>,
        dw: Option<&mut CudaBuf>,
    ) -> Result<()> {
        let _t = self.timer("linear_log_probs_backward");
        checks::log_prob_upstream(upstream, rows)?;
        if dh.is_none() && dw.is_none() {
            return Ok(());
        }
        // ∂logp/∂logits = onehot − softmax: the cross-entropy gradient scaled by −g.
        let scales: Vec<f32> = upstream[..rows].iter().map(|g| -g).collect();
        self.fused_cross_entropy(h, w, targets, rows, FusedScale::PerRow(&scales), dh, dw)?;
        Ok(())
    }

    // ---- optimisation -------------------------------------------------------------------------

    fn adamw(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        n: usize,
        hp: &AdamW,
    ) -> Result<()> {
        let _t = self.timer("adamw");
        checks::each("adamw", n, &[("param", param.len), ("grad", grad.len), ("m", m.len), ("v", v.len)])?;
        self.adamw_raw(self.bptr(param), self.bptr(grad), self.bptr(m), self.bptr(v), n, hp)
    }

    fn adamw_weight(
        &self,
        w: &mut CudaWeight,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        hp: &AdamW,
    ) -> Result<()> {
        let _t = self.timer("adamw_weight");
        let n = w.rows * w.cols;
        let WeightData::F32(p) = &w.data else {
            return Err(EngineError::Unsupported(format!(
                "adamw_weight: a {} weight cannot be trained (only f32 weights are)",
                match self.weight_format(w) {
                    WeightFormat::BF16 => "bf16".to_string(),
                    WeightFormat::Quant(q) => q.name().to_string(),
                    WeightFormat::F32 => unreachable!(),
                }
            )));
        };
        checks::each("adamw_weight", n, &[("grad", grad.len), ("m", m.len), ("v", v.len)])?;
        self.adamw_raw(self.ptr(p), self.bptr(grad), self.bptr(m), self.bptr(v), n, hp)
    }

    fn sum_squares(&self, x: &CudaBuf, n: usize) -> Result<f64> {
        let _t = self.timer("sum_squares");
        checks::need("sum_squares", "x", x.len, n)?;
        if n == 0 {
            return Ok(0.0);
        }
        let acc = self.stream.alloc_zeros::<f64>(1).map_err(drv)?;
        self.launch(
            "sum_squares_k",
            self.elems(n),
            &[self.bptr(x).into(), (n as i64).into(), self.ptr(&acc).into()],
        )?;
        Ok(self.dtoh(&acc)?[0])
    }

    fn dropout(&self, x: &CudaBuf, out: &mut CudaBuf, n: usize, p: f32, seed: u64) -> Result<()> {
        let _t = self.timer("dropout");
        checks::dropout(x.len, out.len, n, p)?;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            "dropout_k",
            self.elems(n),
            &[self.bptr(x).into(), self.bptr(out).into(), (n as i64).into(), p.into(), seed.into()],
        )
    }
}

impl CudaBackend {
    fn adamw_raw(&self, p: u64, g: u64, m: u64, v: u64, n: usize, hp: &AdamW) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let AdamWScalars { decay, step_size, bc2_sqrt } = hp.scalars();
        self.launch(
            "adamw_k",
            self.elems(n),
            &[
                p.into(),
                g.into(),
                m.into(),
                v.into(),
                (n as i64).into(),
                decay.into(),
                hp.beta1.into(),
                hp.beta2.into(),
                hp.eps.into(),
                step_size.into(),
                bc2_sqrt.into(),
            ],
        )
    }
}

/// The gradient scale of [`CudaBackend::fused_cross_entropy`]'s rows.
#[derive(Clone, Copy)]
enum FusedScale<'a> {
    /// One factor for every row.
    Uniform(f32),
    /// One factor per row (`[rows]`, host).
    PerRow(&'a [f32]),
}

impl CudaBackend {
    /// The output projection fused with cross-entropy, chunk by chunk of rows: per-row losses
    /// (0 for ignored rows), with `dh` written and `dw` accumulated for the gradient of
    /// `Σ s_r · loss_r`. Serves [`Backend::linear_cross_entropy`] and the log-probability ops.
    #[allow(clippy::too_many_arguments)]
    fn fused_cross_entropy(
        &self,
        h: &CudaBuf,
        w: &CudaWeight,
        targets: &[i32],
        rows: usize,
        scale: FusedScale<'_>,
        dh: Option<&mut CudaBuf>,
        dw: Option<&mut CudaBuf>,
    ) -> Result<Vec<f32>> {
        let (vocab, dim) = (w.rows, w.cols);
        let (dh_len, dw_len) = (dh.as_deref().map(|d| d.len), dw.as_deref().map(|d| d.len));
        checks::linear_cross_entropy(h.len, targets, dh_len, dw_len, rows, dim, vocab)?;
        let count = targets[..rows].iter().filter(|&&t| t != afinar_formats::IGNORE_INDEX).count();
        if rows == 0 || count == 0 && dh.is_none() && dw.is_none() {
            return Ok(vec![0.0; rows]);
        }
        let want_grad = dh.is_some() || dw.is_some();
        let scales_dev = match scale {
            FusedScale::PerRow(s) => Some(self.upload(&s[..rows])?),
            FusedScale::Uniform(_) => None,
        };
        let (dh_ptr, dw_ptr) = (dh.map(|d| self.bptr(d)), dw.map(|d| self.bptr(d)));
        let mut sc = self.lock();
        let sc = &mut *sc;
        let wop = self.weight_operand(w, &mut sc.weight)?;
        let bf = wop.dt == Dt::BF16;
        // Rows per chunk: logits of a chunk stay under 256 MiB.
        let chunk = ((64usize << 20) / vocab.max(1)).clamp(1, rows);
        let t_all = self.upload(&targets[..rows])?;
        let losses = self.grow(&mut sc.losses, rows)?;
        let losses_ptr = self.ptr(losses);
        let logits = self.ptr(self.grow(&mut sc.logits, chunk * vocab)?);
        let dlog = if !want_grad {
            0
        } else if bf {
            self.ptr(self.grow(&mut sc.dlogits, chunk * vocab)?)
        } else {
            self.ptr(self.grow(&mut sc.dlogits32, chunk * vocab)?)
        };
        let hop_all = self.act_operand(self.bptr(h), rows * dim, dim, wop.dt, &mut sc.act)?;
        let esz = if bf { 2 } else { 4 } as u64;
        let mut r0 = 0;
        while r0 < rows {
            let rc = chunk.min(rows - r0);
            let hop = Operand { ptr: hop_all.ptr + esz * (r0 * dim) as u64, ..hop_all };
            self.product(hop, false, wop, true, logits, vocab, rc, vocab, dim, 1.0, 0.0)?;
            let (kernel, last): (&str, Arg) = match (&scales_dev, scale) {
                (Some(s), _) => {
                    (if bf { "ce_rows_bf16" } else { "ce_rows_f32" }, (self.ptr(s) + 4 * r0 as u64).into())
                }
                (None, FusedScale::Uniform(g)) => (if bf { "ce_bf16" } else { "ce_f32" }, g.into()),
                (None, FusedScale::PerRow(_)) => unreachable!("per-row scales are uploaded above"),
            };
            self.launch(
                kernel,
                Self::rows_cfg(rc, 1024),
                &[
                    logits.into(),
                    (self.ptr(&t_all) + 4 * r0 as u64).into(),
                    (losses_ptr + 4 * r0 as u64).into(),
                    dlog.into(),
                    int(rc, "rows")?.into(),
                    int(vocab, "vocab")?.into(),
                    last,
                ],
            )?;
            if want_grad {
                let g = Operand { ptr: dlog, dt: wop.dt, ld: vocab };
                if let Some(dh) = dh_ptr {
                    self.product(
                        g,
                        false,
                        wop,
                        false,
                        dh + 4 * (r0 * dim) as u64,
                        dim,
                        rc,
                        dim,
                        vocab,
                        1.0,
                        0.0,
                    )?;
                }
                if let Some(dw) = dw_ptr {
                    self.product(g, true, hop, false, dw, dim, vocab, dim, rc, 1.0, 1.0)?;
                }
            }
            r0 += rc;
        }
        let mut l = vec![0f32; rows];
        let losses = sc.losses.as_ref().expect("grown above");
        self.stream.memcpy_dtoh(&losses.slice(..rows), &mut l[..]).map_err(drv)?;
        self.stream.synchronize().map_err(drv)?;
        for (v, &t) in l.iter_mut().zip(&targets[..rows]) {
            if t == afinar_formats::IGNORE_INDEX {
                *v = 0.0;
            }
        }
        Ok(l)
    }
}

//! Linear layers with bf16 products on Intel AMX (`tdpbf16ps`) or, without AMX, on AVX512-BF16
//! dot products (`vdpbf16ps`, the same packed operands): `y = x Wᵀ` and `dx = dy W` for many rows, as mixed-precision training and prefill do it: the activations are rounded to bf16
//! once per call, the weight is packed into the VNNI tile layout AMX expects (once per call, or
//! once for many calls with [`PackedB`]), and the products accumulate in f32 tiles over the whole
//! inner dimension. Each 32 × 32 output block is computed by one kernel call with a fixed order
//! over `k`, so results do not depend on the number of threads; they equal an f32 product of the
//! bf16-rounded operands up to the order of f32 additions.
//!
//! [`bf16_products`] says whether either unit is usable; the AMX tiles are preferred where granted.
//! The AVX-512 kernel computes each 32 × 32 block with the same pairing of `k` (pairs summed by
//! `vdpbf16ps`, then accumulated in f32 in `k` order), so it too does not depend on threads.
//!
//! The tile instructions go through `asm!` (the AMX intrinsics are not stable in Rust 1.95).
//! Linux hands out the tile state only after `arch_prctl(ARCH_REQ_XCOMP_PERM)`; [`available`]
//! asks for it once per process.

use rayon::prelude::*;
use std::sync::{Mutex, OnceLock};

/// Output rows per micro-kernel (two 16-row tiles).
const MR: usize = 32;
/// Output columns per micro-kernel (two 16-column tiles).
const NR: usize = 32;
/// Inner-dimension elements per tile step (16 pairs of bf16 = 64 bytes).
const KB: usize = 32;
/// Bytes of one packed B tile (16 rows × 64 bytes).
const BTILE: usize = 1024;
/// Row blocks (of `MR`) per parallel task.
const TASK_MB: usize = 4;
/// Column blocks (of `NR`) per parallel task.
const TASK_NB: usize = 8;

/// Whether AMX-BF16 (with AVX512-BF16 for the conversions) is usable in this process: the CPU
/// has it, the cap of [`super::features`] allows it (level `amx`) and the kernel granted the tile
/// state. Set `AFINAR_NO_AMX=1` to turn it off (as `AFINAR_CPU_LEVEL=avx512_bf16` does). Records
/// the `amx` level as taken when it answers yes.
pub fn available() -> bool {
    use super::features::{allows, note, CpuLevel};
    static GRANTED: OnceLock<bool> = OnceLock::new();
    let ok = allows(CpuLevel::Amx)
        && *GRANTED.get_or_init(|| std::env::var_os("AFINAR_NO_AMX").is_none() && request_tiles());
    if ok {
        note(CpuLevel::Amx);
    }
    ok
}

/// Whether bf16 products are usable in this process: on AMX tiles ([`available`]), else with
/// AVX512-BF16 dot products (`vdpbf16ps`, level `avx512_bf16`: AMD Zen 4/5, Intel Cooper Lake and
/// later) over the same packed operands. Records the level taken when it answers yes.
pub fn bf16_products() -> bool {
    use super::features::{take, CpuLevel};
    available() || take(CpuLevel::Avx512Bf16)
}

/// Asks Linux for the tile state (only called where the CPU has AMX: level `amx` detected).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tiles() -> bool {
    // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18): ask Linux to enable the
    // tile data state for this process (all its threads). Returns 0 on success, -errno else.
    let ret: i64;
    // SAFETY: a plain system call that only changes this process' permitted XSAVE features; the
    // `syscall` instruction clobbers rcx and r11, declared below, and touches no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") 158i64 => ret,
            in("rdi") 0x1023i64,
            in("rsi") 18i64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tiles() -> bool {
    false
}

/// A raw pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: the tasks that share it write disjoint elements (see each use).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(&self) -> *mut T {
        self.0
    }
}

/// Packing buffers kept for the next product: a training step packs thousands of operands of a
/// few MiB each, and fresh allocations of that size come from `mmap` and are faulted in page by
/// page every time (a tenth of a step's time). Up to [`POOL_BUFFERS`] buffers of at most
/// [`POOL_MAX_LEN`] elements are kept; larger ones (an output projection's vocabulary) are
/// allocated and freed as before. Buffers come back with stale contents: every packing function
/// writes all the elements of its buffer, padding included.
static POOL: Mutex<Vec<Vec<u16>>> = Mutex::new(Vec::new());
/// Buffers [`POOL`] keeps.
const POOL_BUFFERS: usize = 4;
/// Largest buffer (in bf16 elements, 8 MiB) that [`POOL`] keeps.
const POOL_MAX_LEN: usize = 4 << 20;

/// A buffer of `len` elements whose contents are unspecified: the smallest pooled one that
/// fits, or a new one.
fn take_buffer(len: usize) -> Vec<u16> {
    let reused = (len <= POOL_MAX_LEN)
        .then(|| {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            let best =
                (0..pool.len()).filter(|&i| pool[i].capacity() >= len).min_by_key(|&i| pool[i].capacity());
            best.map(|i| pool.swap_remove(i))
        })
        .flatten();
    match reused {
        Some(mut v) => {
            v.resize(len, 0);
            v
        }
        None => vec![0u16; len],
    }
}

/// Returns a buffer to [`POOL`] (or frees it): a full pool keeps its largest buffers.
fn give_buffer(v: Vec<u16>) {
    if v.capacity() == 0 || v.capacity() > POOL_MAX_LEN {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_BUFFERS {
        pool.push(v);
    } else if let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].capacity()) {
        if pool[i].capacity() < v.capacity() {
            pool[i] = v;
        }
    }
}

/// Activations rounded to bf16 (nearest even), zero-padded to `kp` (a multiple of 32) columns
/// and a multiple of 32 rows; row stride `kp`.
struct PackedA {
    data: Vec<u16>,
    kp: usize,
}

impl Drop for PackedA {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.data));
    }
}

/// The `B` operand (`[k, n]`) of a product in VNNI tiles: for each 16-column panel and each
/// 32-deep `k` block, one 1 KiB tile of 16 rows (pairs of `k`) × 16 columns × 2 bf16.
/// Zero-padded to a multiple of 32 columns. A weight packed once serves any number of products
/// ([`pack_linear`], [`pack_linear_transposed`], [`matmul_packed`]).
pub struct PackedB {
    data: Vec<u16>,
    kblocks: usize,
    k: usize,
    n: usize,
}

impl Drop for PackedB {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.data));
    }
}

impl PackedB {
    /// Inner dimension `k`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output columns `n`.
    pub fn n(&self) -> usize {
        self.n
    }
}

/// Rounds `src[m, k]` (f32, row-major) to bf16 (see [`PackedA`]).
fn pack_a(src: &[f32], m: usize, k: usize) -> PackedA {
    let mp = m.div_ceil(MR) * MR;
    let kp = k.div_ceil(KB) * KB;
    let mut data = take_buffer(mp * kp);
    data.par_chunks_mut(kp * 16).enumerate().for_each(|(c, dst)| {
        for (i, d) in dst.chunks_mut(kp).enumerate() {
            let r = c * 16 + i;
            if r < m {
                // SAFETY: `bf16_products()` checked AVX512-BF16 before any bf16 product runs.
                unsafe { simd::round_row(&src[r * k..(r + 1) * k], &mut d[..k]) };
                d[k..].fill(0);
            } else {
                d.fill(0);
            }
        }
    });
    PackedA { data, kp }
}

/// Rounds `srcᵀ` to bf16 for `src[k, m]` (f32, row-major), i.e. packs the `m × k` matrix whose
/// row `i` is column `i` of `src` (see [`PackedA`]), 16 × 16 blocks at a time.
fn pack_a_transposed(src: &[f32], k: usize, m: usize) -> PackedA {
    assert!(src.len() >= k * m);
    let mp = m.div_ceil(MR) * MR;
    let kp = k.div_ceil(KB) * KB;
    let mut data = take_buffer(mp * kp);
    data.par_chunks_mut(kp * 16).enumerate().for_each(|(c, dst)| {
        let r0 = c * 16;
        let nr = m.saturating_sub(r0).min(16);
        let mut block = [[0f32; 16]; 16];
        for j0 in (0..k).step_by(16).filter(|_| nr > 0) {
            let nj = (k - j0).min(16);
            for (jj, row) in src[j0 * m..].chunks(m).take(nj).enumerate() {
                for (ii, &v) in row[r0..r0 + nr].iter().enumerate() {
                    block[ii][jj] = v;
                }
            }
            for (ii, b) in block.iter().take(nr).enumerate() {
                // SAFETY: `bf16_products()` checked AVX512-BF16 before any bf16 product runs.
                unsafe { simd::round_row(&b[..nj], &mut dst[ii * kp + j0..ii * kp + j0 + nj]) };
            }
        }
        for (ii, d) in dst.chunks_mut(kp).enumerate() {
            d[if ii < nr { k } else { 0 }..].fill(0);
        }
    });
    PackedA { data, kp }
}

/// Packs `B[k, n]` into VNNI tiles; `fill(panel, n0, ncols)` writes the 16-column panel
/// starting at column `n0` (`ncols ≤ 16` of them real), where element `(k, n0 + j)` goes to
/// `panel[(k / 2) · 32 + 2j + k % 2]` (consecutive 1 KiB tiles of 16 `k` pairs each).
fn pack_b(k: usize, n: usize, fill: impl Fn(&mut [u16], usize, usize) + Sync) -> PackedB {
    let kblocks = k.div_ceil(KB);
    let panels = n.div_ceil(NR) * 2;
    let mut data = take_buffer(panels * kblocks * BTILE / 2);
    data.par_chunks_mut(kblocks * BTILE / 2).enumerate().for_each(|(nb, panel)| {
        let n0 = nb * 16;
        let ncols = n.saturating_sub(n0).min(16);
        // `fill` writes every element of a whole panel; padding is zero.
        if ncols < 16 || !k.is_multiple_of(KB) {
            panel.fill(0);
        }
        if ncols > 0 {
            fill(panel, n0, ncols);
        }
    });
    PackedB { data, kblocks, k, n }
}

/// `W: [out, inp]` (bf16) packed as the `B = Wᵀ` of `y = x Wᵀ`.
///
/// # Panics
/// When `w` holds fewer than `out · inp` values.
pub fn pack_linear(w: &[half::bf16], out: usize, inp: usize) -> PackedB {
    pack_rows(w, out, inp, |v| v.to_bits(), |_, _| false)
}

/// `W: [out, inp]` (bf16) packed as the `B = W` of `dx = dy W`.
///
/// # Panics
/// When `w` holds fewer than `out · inp` values.
pub fn pack_linear_transposed(w: &[half::bf16], out: usize, inp: usize) -> PackedB {
    pack_cols(w, out, inp, |v| v.to_bits(), |_, _| false)
}

/// [`pack_linear`] from f32 weights, rounded to bf16 (nearest even) on the way in: the products
/// of trainable f32 weights in mixed precision (full fine-tuning with bf16 products).
///
/// # Panics
/// When `w` holds fewer than `out · inp` values.
pub fn pack_linear_f32(w: &[f32], out: usize, inp: usize) -> PackedB {
    let simd = bf16_products();
    pack_rows(
        w,
        out,
        inp,
        |v| half::bf16::from_f32(v).to_bits(),
        |panel, n0| {
            // SAFETY: AVX512-BF16 is available (`simd`); rows n0..n0 + 16 of `w` exist (a whole
            // panel) and the panel holds every k of them.
            simd && unsafe { simd::pack_rows_panel(w, inp, n0, panel) }
        },
    )
}

/// [`pack_linear_transposed`] from f32 values, rounded to bf16 on the way in.
///
/// # Panics
/// When `w` holds fewer than `out · inp` values.
pub fn pack_linear_transposed_f32(w: &[f32], out: usize, inp: usize) -> PackedB {
    let simd = bf16_products();
    pack_cols(
        w,
        out,
        inp,
        |v| half::bf16::from_f32(v).to_bits(),
        |panel, n0| {
            // SAFETY: AVX512-BF16 is available (`simd`); columns n0..n0 + 16 of every row of `w`
            // exist (a whole panel) and the panel holds every k.
            simd && unsafe { simd::pack_cols_panel(w, out, inp, n0, panel) }
        },
    )
}

/// `w: [out, inp]` as `B = wᵀ` (`k = inp`, `n = out`), each value through `bits`; a whole
/// 16-column panel goes to `panel16(panel, n0)` first, which returns false to leave it to the
/// scalar loop.
fn pack_rows<T: Copy + Sync>(
    w: &[T],
    out: usize,
    inp: usize,
    bits: impl Fn(T) -> u16 + Sync,
    panel16: impl Fn(&mut [u16], usize) -> bool + Sync,
) -> PackedB {
    assert!(w.len() >= out * inp);
    pack_b(inp, out, |panel, n0, ncols| {
        if ncols == 16 && panel16(panel, n0) {
            return;
        }
        for j in 0..ncols {
            let row = &w[(n0 + j) * inp..(n0 + j + 1) * inp];
            for (k, &v) in row.iter().enumerate() {
                panel[vnni(k, j)] = bits(v);
            }
        }
    })
}

/// `w: [out, inp]` as `B = w` (`k = out`, `n = inp`), each value through `bits`; a whole
/// 16-column panel goes to `panel16(panel, n0)` first, as in [`pack_rows`].
fn pack_cols<T: Copy + Sync>(
    w: &[T],
    out: usize,
    inp: usize,
    bits: impl Fn(T) -> u16 + Sync,
    panel16: impl Fn(&mut [u16], usize) -> bool + Sync,
) -> PackedB {
    assert!(w.len() >= out * inp);
    pack_b(out, inp, |panel, n0, ncols| {
        if ncols == 16 && panel16(panel, n0) {
            return;
        }
        for k in 0..out {
            let row = &w[k * inp + n0..k * inp + n0 + ncols];
            let dst = &mut panel[(k >> 1) * 32..(k >> 1) * 32 + 32];
            for (j, &v) in row.iter().enumerate() {
                dst[2 * j + (k & 1)] = bits(v);
            }
        }
    })
}

/// The weight gradient `dw[out, inp] (+)= dyᵀ · x` of a linear layer (`dy: [rows, out]`,
/// `x: [rows, inp]`) on AMX: both rounded to bf16, f32 accumulation. When `accumulate` is
/// false the old contents of `dw` are not read.
///
/// # Panics
/// When a slice is shorter than its matrix, or when [`bf16_products`] is false.
pub fn weight_grad(
    dy: &[f32],
    x: &[f32],
    dw: &mut [f32],
    rows: usize,
    out: usize,
    inp: usize,
    accumulate: bool,
) {
    assert!(bf16_products(), "bf16 products (AMX or AVX512-BF16) are not available");
    assert!(dy.len() >= rows * out && x.len() >= rows * inp && dw.len() >= out * inp);
    if out == 0 || inp == 0 {
        return;
    }
    if rows == 0 {
        // An empty sum (the kernel needs at least one `k` block).
        if !accumulate {
            dw[..out * inp].fill(0.0);
        }
        return;
    }
    // dyᵀ as the A operand; x is B = x ([rows, inp], k = rows).
    let a = pack_a_transposed(dy, rows, out);
    run(&a, &pack_linear_transposed_f32(x, rows, inp), dw, out, inp, inp, accumulate);
}

/// Index of `(k, j)` in a packed panel.
#[inline(always)]
fn vnni(k: usize, j: usize) -> usize {
    (k >> 1) * 32 + 2 * j + (k & 1)
}

/// Parallel task grid over `mblocks × nblocks` 32 × 32 blocks: up to [`TASK_MB`] × [`TASK_NB`]
/// blocks per task, fewer when that would leave too few tasks to keep every thread busy. (Each
/// block is still computed whole by one kernel call, so the grid never changes the results.)
fn task_grid(mblocks: usize, nblocks: usize) -> (usize, usize) {
    let want = 4 * rayon::current_num_threads();
    let (mut bm, mut bn) = (TASK_MB, TASK_NB);
    while mblocks.div_ceil(bm) * nblocks.div_ceil(bn) < want && (bm > 1 || bn > 1) {
        if bn > 1 {
            bn /= 2;
        } else {
            bm /= 2;
        }
    }
    (bm, bn)
}

/// `c[m, n] (+)= A · B` over packed operands, `c` row-major with row stride `ldc`.
/// `k` must not be 0: the kernel runs at least one `k` block.
fn run(a: &PackedA, b: &PackedB, c: &mut [f32], m: usize, n: usize, ldc: usize, accumulate: bool) {
    debug_assert!(b.kblocks > 0);
    let mblocks = m.div_ceil(MR);
    let nblocks = n.div_ceil(NR);
    let (bm, bn) = task_grid(mblocks, nblocks);
    let (tm, tn) = (mblocks.div_ceil(bm), nblocks.div_ceil(bn));
    let cp = SharedMut(c.as_mut_ptr());
    // AMX tiles where granted, else AVX512-BF16 dot products (the callers checked
    // `bf16_products()`).
    let amx = available();
    // SAFETY (for both kernels): `a` addresses 32 rows of `kblocks · 32` bf16 at `sa` bytes, `b`
    // two panels of `kblocks` tiles, `c` 32 rows of 32 f32 at `sc` bytes (see the calls below); on
    // AMX the tiles are configured on this thread (each task configures them first).
    let kb = b.kblocks;
    let block = |a: *const u16, sa: usize, b: *const u16, c: *mut f32, sc: usize| unsafe {
        if amx {
            kernel(a, sa, b, kb, c, sc)
        } else {
            simd::dot_kernel(a, sa, b, kb, c, sc)
        }
    };
    (0..tm * tn).into_par_iter().for_each(|t| {
        let (ti, tj) = (t / tn, t % tn);
        let mut scratch = [0.0f32; MR * NR];
        if amx {
            // SAFETY: AMX is available; the configuration lives until `release_tiles` below,
            // and nothing in between but `kernel` touches tiles (a rayon task runs start to end
            // on one thread and this loop calls no rayon functions).
            unsafe { config_tiles() };
        }
        for nb in tj * bn..((tj + 1) * bn).min(nblocks) {
            let b0 = &b.data[(2 * nb) * b.kblocks * BTILE / 2..];
            for mb in ti * bm..((ti + 1) * bm).min(mblocks) {
                let a0 = &a.data[mb * MR * a.kp..];
                let (m0, n0) = (mb * MR, nb * NR);
                let (mm, nn) = ((m - m0).min(MR), (n - n0).min(NR));
                if mm == MR && nn == NR && !accumulate {
                    // A whole block that overwrites: the results go straight into `c`.
                    // SAFETY: rows m0..m0 + 32 and columns n0..n0 + 32 of `c` are in bounds and
                    // belong to this task only; `a0` and `b0` hold whole blocks (padding).
                    let cb = unsafe { cp.get().add(m0 * ldc + n0) };
                    block(a0.as_ptr(), a.kp * 2, b0.as_ptr(), cb, ldc * 4);
                    continue;
                }
                // `a0` holds 32 rows of `kp` bf16 and `b0` two panels of `kblocks` tiles (padding
                // guarantees both); `scratch` holds 32 × 32 f32.
                block(a0.as_ptr(), a.kp * 2, b0.as_ptr(), scratch.as_mut_ptr(), NR * 4);
                for i in 0..mm {
                    let s = &scratch[i * NR..i * NR + nn];
                    // SAFETY: row m0 + i < m and columns n0..n0 + nn < n are in bounds of `c`
                    // (the caller checked c.len() ≥ (m - 1) · ldc + n); this (mb, nb) block
                    // belongs to this task only, so no other thread touches these elements.
                    let d = unsafe { std::slice::from_raw_parts_mut(cp.get().add((m0 + i) * ldc + n0), nn) };
                    if accumulate {
                        d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
                    } else {
                        d.copy_from_slice(s);
                    }
                }
            }
        }
        if amx {
            // SAFETY: as for `config_tiles` above.
            unsafe { release_tiles() };
        }
    });
}

/// Loads the tile configuration used by [`kernel`]: palette 1, tiles 0..8 all 16 rows × 64
/// bytes.
///
/// # Safety
/// AMX-TILE must be enabled for the process. The configuration stays loaded on this thread until
/// [`release_tiles`]; callers must not run anything between the two that could use tiles
/// differently (nothing in this crate or the compiler's output does).
#[cfg(target_arch = "x86_64")]
unsafe fn config_tiles() {
    #[repr(C, align(64))]
    struct Cfg([u8; 64]);
    let mut cfg = Cfg([0; 64]);
    cfg.0[0] = 1;
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64;
        cfg.0[48 + t] = 16;
    }
    // SAFETY: `cfg` is a valid 64-byte, 64-aligned palette-1 configuration (reserved bytes 0).
    unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
}

/// Returns the tile state to its initial (unconfigured) state.
///
/// # Safety
/// AMX-TILE must be enabled for the process.
#[cfg(target_arch = "x86_64")]
unsafe fn release_tiles() {
    // SAFETY: `tilerelease` only resets the tile registers and configuration.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

/// One 32 × 32 block: `c = A[32, kblocks·32] · B`, two 16-row A tiles against two 16-column B
/// panels, four f32 accumulator tiles; `c` has a row stride of `c_stride` bytes.
///
/// # Safety
/// The tiles must be configured by [`config_tiles`] on this thread; `a` must address 32 rows of
/// `kblocks · 32` bf16 with row stride `a_stride` bytes; `b` two consecutive panels of `kblocks`
/// 1 KiB tiles; `c` 32 rows of 32 writable f32 at `c_stride` bytes; `kblocks ≥ 1`.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
unsafe fn kernel(
    a: *const u16,
    a_stride: usize,
    b: *const u16,
    kblocks: usize,
    c: *mut f32,
    c_stride: usize,
) {
    let a1 = a.wrapping_byte_add(16 * a_stride);
    let b1 = b.wrapping_byte_add(kblocks * BTILE);
    let c1 = c.wrapping_byte_add(16 * c_stride);
    // SAFETY: see the function contract. tmm0..3 accumulate C, tmm4/5 hold A, tmm6/7 B; the
    // loop walks 64 bytes along A and one 1 KiB tile along each B panel per step and reads only
    // inside the operands; the stores write exactly the 32 × 32 f32 of `c`.
    // The compiler never allocates tile registers, so clobbering them is invisible to it.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "mov {s64}, 64",
            "2:",
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {cnt}",
            "jnz 2b",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "tilestored [{c1} + {cs}*1], tmm2",
            "tilestored [{c1} + {cs}*1 + 64], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b => _,
            b1 = inout(reg) b1 => _,
            sa = in(reg) a_stride,
            cnt = inout(reg) kblocks => _,
            c = in(reg) c,
            c1 = in(reg) c1,
            cs = in(reg) c_stride,
            s64 = out(reg) _,
            options(nostack),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: *const u16, _: usize, _: *const u16, _: usize, _: *mut f32, _: usize) {
    unreachable!("AMX is never reported available off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn config_tiles() {
    unreachable!("AMX is never reported available off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn release_tiles() {
    unreachable!("AMX is never reported available off x86_64")
}

/// `y[rows, n] (+)= x[rows, k] · B` for a packed `B` (see [`PackedB`]), on AMX, with `x`
/// rounded to bf16 and f32 accumulation. When `accumulate` is false the old contents of `y` are
/// not read.
///
/// # Panics
/// When a slice is shorter than its matrix, or when [`bf16_products`] is false.
pub fn matmul_packed(x: &[f32], b: &PackedB, y: &mut [f32], rows: usize, accumulate: bool) {
    assert!(bf16_products(), "bf16 products (AMX or AVX512-BF16) are not available");
    let (k, n) = (b.k, b.n);
    assert!(x.len() >= rows * k && y.len() >= rows * n);
    if rows == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            y[..rows * n].fill(0.0);
        }
        return;
    }
    let a = pack_a(x, rows, k);
    run(&a, b, y, rows, n, n, accumulate);
}

/// `y[rows, out] (+)= x[rows, inp] · Wᵀ` with `W: [out, inp]` in bf16, on AMX (`x` rounded to
/// bf16, f32 accumulation). When `accumulate` is false the old contents of `y` are not read.
///
/// # Panics
/// When a slice is shorter than its matrix, or when [`bf16_products`] is false.
pub fn linear_forward(
    x: &[f32],
    w: &[half::bf16],
    y: &mut [f32],
    rows: usize,
    out: usize,
    inp: usize,
    accumulate: bool,
) {
    assert!(bf16_products(), "bf16 products (AMX or AVX512-BF16) are not available");
    assert!(x.len() >= rows * inp && y.len() >= rows * out && w.len() >= out * inp);
    if rows == 0 || out == 0 {
        return;
    }
    matmul_packed(x, &pack_linear(w, out, inp), y, rows, accumulate);
}

/// `dx[rows, inp] (+)= dy[rows, out] · W` with `W: [out, inp]` in bf16, on AMX (`dy` rounded to
/// bf16, f32 accumulation). When `accumulate` is false the old contents of `dx` are not read.
///
/// # Panics
/// When a slice is shorter than its matrix, or when [`bf16_products`] is false.
pub fn linear_backward_input(
    dy: &[f32],
    w: &[half::bf16],
    dx: &mut [f32],
    rows: usize,
    out: usize,
    inp: usize,
    accumulate: bool,
) {
    assert!(bf16_products(), "bf16 products (AMX or AVX512-BF16) are not available");
    assert!(dy.len() >= rows * out && dx.len() >= rows * inp && w.len() >= out * inp);
    if rows == 0 || inp == 0 {
        return;
    }
    matmul_packed(dy, &pack_linear_transposed(w, out, inp), dx, rows, accumulate);
}

/// The weight `W: [vocab, dim]` of [`linear_cross_entropy`]: f32 (rounded to bf16 as it is
/// packed) or bf16.
#[derive(Clone, Copy)]
pub enum OutputWeight<'a> {
    /// f32 values (mixed precision).
    F32(&'a [f32]),
    /// bf16 values.
    Bf16(&'a [half::bf16]),
}

impl OutputWeight<'_> {
    /// Rows `v0..v0 + nb` of `W` packed as the `B = W_bᵀ` of `logits = h W_bᵀ`.
    fn pack(self, v0: usize, nb: usize, dim: usize) -> PackedB {
        match self {
            Self::F32(w) => pack_linear_f32(&w[v0 * dim..(v0 + nb) * dim], nb, dim),
            Self::Bf16(w) => pack_linear(&w[v0 * dim..(v0 + nb) * dim], nb, dim),
        }
    }

    /// Rows `v0..v0 + nb` of `W` packed as the `B = W_b` of `dh = dlogits W_b`.
    fn pack_transposed(self, v0: usize, nb: usize, dim: usize) -> PackedB {
        match self {
            Self::F32(w) => pack_linear_transposed_f32(&w[v0 * dim..(v0 + nb) * dim], nb, dim),
            Self::Bf16(w) => pack_linear_transposed(&w[v0 * dim..(v0 + nb) * dim], nb, dim),
        }
    }
}

/// Logits kept at once by [`linear_cross_entropy`] (f32 elements: 8 MiB).
const CE_TILE: usize = 1 << 21;
/// Rows [`linear_cross_entropy`] takes at once.
const CE_ROWS: usize = 4096;

/// Output projection fused with cross-entropy on AMX (`h` and `W` rounded to bf16, f32 sums):
/// `logits = h[rows, dim] · Wᵀ` is made one block of vocabulary columns at a time for all rows,
/// twice: the first pass gathers each row's maximum, sum of exponentials and target logit (the
/// loss); the second makes the same logits again, turns them into `grad_scale · (softmax −
/// onehot)` and adds their products to `dh` (overwritten) and `dw` (accumulated; on AMX for an
/// f32 weight as mixed precision trains it, in f32 for a bf16 one). Only one
/// block of logits and of `W` (packed) exists at a time: a few MiB instead of the whole packed
/// `W` twice, for one more product of the size of the logits. Returns the sum of the losses
/// of non-ignored rows (in f64, in row order) and their count.
///
/// # Panics
/// When a slice is shorter than its matrix, a target is out of range, or [`available`] is false.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy(
    h: &[f32],
    w: OutputWeight<'_>,
    targets: &[i32],
    rows: usize,
    vocab: usize,
    dim: usize,
    grad_scale: f32,
    mut dh: Option<&mut [f32]>,
    mut dw: Option<&mut [f32]>,
) -> (f64, usize) {
    use super::loss::{targets_valid, IGNORE_INDEX};
    use super::vector;
    assert!(bf16_products(), "bf16 products (AMX or AVX512-BF16) are not available");
    let wlen = match w {
        OutputWeight::F32(w) => w.len(),
        OutputWeight::Bf16(w) => w.len(),
    };
    assert!(vocab > 0 && dim > 0 && wlen >= vocab * dim && h.len() >= rows * dim);
    assert!(targets.len() >= rows && targets_valid(&targets[..rows], vocab));
    assert!(dh.as_deref().is_none_or(|d| d.len() >= rows * dim));
    assert!(dw.as_deref().is_none_or(|d| d.len() >= vocab * dim));
    let (mut total, mut count) = (0.0f64, 0usize);
    for r0 in (0..rows).step_by(CE_ROWS) {
        let n = (rows - r0).min(CE_ROWS);
        let (hc, tc) = (&h[r0 * dim..(r0 + n) * dim], &targets[r0..r0 + n]);
        let vb = (CE_TILE / n / NR * NR).clamp(NR, vocab.div_ceil(NR) * NR);
        let a = pack_a(hc, n, dim);
        let mut tile = vec![0f32; n * vb];
        let blocks = || (0..vocab).step_by(vb).map(|v0| (v0, (vocab - v0).min(vb)));
        // Pass 1: per row, the running maximum and sum of exp(logit − maximum), and the target
        // logit.
        let mut stats = vec![(f32::NEG_INFINITY, 0.0f32, 0.0f32); n];
        for (v0, nb) in blocks() {
            let t = &mut tile[..n * nb];
            run(&a, &w.pack(v0, nb, dim), t, n, nb, nb, false);
            t.par_chunks(nb).zip(stats.par_iter_mut()).zip(tc.par_iter()).for_each(|((l, st), &tg)| {
                if tg == IGNORE_INDEX {
                    return;
                }
                let m = st.0.max(vector::max(l));
                st.1 = st.1 * (st.0 - m).exp() + vector::exp_sub_sum_ro(l, m);
                st.0 = m;
                if let Some(&lt) = (tg as usize).checked_sub(v0).and_then(|j| l.get(j)) {
                    st.2 = lt;
                }
            });
        }
        for (&(m, s, lt), &tg) in stats.iter().zip(tc) {
            if tg != IGNORE_INDEX {
                total += (m + s.ln() - lt) as f64;
                count += 1;
            }
        }
        if dh.is_none() && dw.is_none() {
            continue;
        }
        // Pass 2: the same logits again, now as gradients, into both products.
        // dW on AMX for an f32 (trained, mixed-precision) weight; for a bf16 one in f32, from the
        // unrounded logit gradients.
        let amx_dw = matches!(w, OutputWeight::F32(_));
        let hb = (dw.is_some() && amx_dw).then(|| pack_linear_transposed_f32(hc, n, dim));
        let mut dhc = dh.as_deref_mut().map(|d| &mut d[r0 * dim..(r0 + n) * dim]);
        for (i, (v0, nb)) in blocks().enumerate() {
            let t = &mut tile[..n * nb];
            run(&a, &w.pack(v0, nb, dim), t, n, nb, nb, false);
            t.par_chunks_mut(nb).zip(stats.par_iter()).zip(tc.par_iter()).for_each(|((l, st), &tg)| {
                if tg == IGNORE_INDEX {
                    l.fill(0.0);
                    return;
                }
                vector::exp_sub_sum(l, st.0);
                vector::scale(l, grad_scale / st.1);
                if let Some(g) = (tg as usize).checked_sub(v0).and_then(|j| l.get_mut(j)) {
                    *g -= grad_scale;
                }
            });
            if let Some(d) = dhc.as_deref_mut() {
                run(&pack_a(t, n, nb), &w.pack_transposed(v0, nb, dim), d, n, dim, dim, i > 0);
            }
            if let Some(dw) = dw.as_deref_mut() {
                let rows_b = &mut dw[v0 * dim..(v0 + nb) * dim];
                match &hb {
                    Some(hb) => run(&pack_a_transposed(t, n, nb), hb, rows_b, nb, dim, dim, true),
                    None => super::matmul::matmul(t, true, hc, false, rows_b, nb, dim, n, 1.0, 1.0),
                }
            }
        }
    }
    (total, count)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// Rounds f32 values to bf16 (nearest even; NaN stays NaN, ±∞ stays ±∞) into `dst`.
    ///
    /// # Safety
    /// AVX-512F/BW/VL and AVX512-BF16 must be available.
    ///
    /// # Panics
    /// When `dst` is shorter than `src`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
        let n = src.len();
        assert!(dst.len() >= n);
        let mut i = 0;
        // SAFETY: every access is at i..i + 16 ≤ n, or masked to the elements below n ≤ dst.len().
        unsafe {
            while i < n {
                let left = n - i;
                let mask: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
                let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
                let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), mask, h);
                i += 16;
            }
        }
    }

    /// Rows of the 32-row block one pass of [`dot_kernel`] computes (2 × 8 accumulators).
    const DOT_ROWS: usize = 8;

    /// One 32 × 32 block with AVX512-BF16 dot products, as the AMX kernel computes it: `c =
    /// A[32, kblocks·32] · B` from the same packed operands. Each pass takes 8 rows against both
    /// 16-column panels (16 accumulators); per pair of `k`, one load of each panel's 16 column
    /// pairs and one broadcast of each row's pair feed two `vdpbf16ps`.
    ///
    /// # Safety
    /// AVX-512F/BW/VL and AVX512-BF16 must be available; `a` must address 32 rows of
    /// `kblocks · 32` bf16 with row stride `a_stride` bytes; `b` two consecutive panels of
    /// `kblocks` 1 KiB tiles; `c` 32 rows of 32 writable f32 at `c_stride` bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn dot_kernel(
        a: *const u16,
        a_stride: usize,
        b: *const u16,
        kblocks: usize,
        c: *mut f32,
        c_stride: usize,
    ) {
        let pairs = kblocks * super::KB / 2;
        let b0 = b.cast::<u8>();
        let b1 = b0.wrapping_add(kblocks * super::BTILE);
        for r0 in (0..super::MR).step_by(DOT_ROWS) {
            let mut acc = [[_mm512_setzero_ps(); 2]; DOT_ROWS];
            let rows: [*const i32; DOT_ROWS] =
                std::array::from_fn(|i| a.cast::<u8>().wrapping_add((r0 + i) * a_stride).cast::<i32>());
            // SAFETY: pair q < pairs of each row and of each panel (64 bytes per pair) is inside
            // the operands (the contract); the stores write rows r0..r0 + 8 of the block.
            unsafe {
                for q in 0..pairs {
                    let p0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(q * 64).cast()));
                    let p1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(q * 64).cast()));
                    for i in 0..DOT_ROWS {
                        let x: __m512bh =
                            std::mem::transmute(_mm512_set1_epi32(rows[i].add(q).read_unaligned()));
                        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], x, p0);
                        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], x, p1);
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    let d = c.cast::<u8>().add((r0 + i) * c_stride).cast::<f32>();
                    _mm512_storeu_ps(d, acc[0]);
                    _mm512_storeu_ps(d.add(16), acc[1]);
                }
            }
        }
    }

    /// The 16-column panel of `B = wᵀ` (`w: [·, inp]` rows `n0..n0 + 16`, see `pack_b`) in
    /// bf16: 32 values of a row at a time converted in registers and scattered to their 16
    /// column slots, the last `inp % 32` one by one. Returns true (the panel is done).
    ///
    /// # Safety
    /// AVX-512F/BW/VL and AVX512-BF16 must be available.
    ///
    /// # Panics
    /// When `w` lacks rows `n0..n0 + 16` or `panel` is shorter than `inp` rounded up to pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn pack_rows_panel(w: &[f32], inp: usize, n0: usize, panel: &mut [u16]) -> bool {
        assert!(w.len() >= (n0 + 16) * inp && panel.len() >= inp.div_ceil(2) * 32);
        // The u32 (bf16 pair) `i` of a converted row goes to pair slot `i · 16` of the panel.
        let slots = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
        for j in 0..16 {
            let row = &w[(n0 + j) * inp..(n0 + j + 1) * inp];
            let mut k = 0;
            // SAFETY: loads read row[k..k + 32] with k + 32 ≤ inp; the scatter writes pair slots
            // (k/2 + i) · 16 + j < inp/2 · 16 ≤ panel.len() / 2 u32 for i < 16.
            unsafe {
                while k + 32 <= inp {
                    let lo = _mm512_loadu_ps(row.as_ptr().add(k));
                    let hi = _mm512_loadu_ps(row.as_ptr().add(k + 16));
                    let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    let base = panel.as_mut_ptr().cast::<i32>().add((k / 2) * 16 + j);
                    _mm512_i32scatter_epi32::<4>(base, slots, pairs);
                    k += 32;
                }
            }
            for (kk, &v) in row.iter().enumerate().skip(k) {
                panel[(kk >> 1) * 32 + 2 * j + (kk & 1)] = half::bf16::from_f32(v).to_bits();
            }
        }
        true
    }

    /// The 16-column panel of `B = w` (`w: [out, inp]`, columns `n0..n0 + 16`, see `pack_b`)
    /// in bf16: for each pair of rows `k, k + 1`, both 16-value pieces converted and
    /// interleaved in registers (a missing last row counts as zeros). Returns true (the panel is
    /// done).
    ///
    /// # Safety
    /// AVX-512F/BW/VL and AVX512-BF16 must be available.
    ///
    /// # Panics
    /// When `w` lacks columns `n0..n0 + 16` or `panel` is shorter than `out` rounded up to pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn pack_cols_panel(w: &[f32], out: usize, inp: usize, n0: usize, panel: &mut [u16]) -> bool {
        assert!(n0 + 16 <= inp && w.len() >= out * inp && panel.len() >= out.div_ceil(2) * 32);
        let mut k = 0;
        // SAFETY: loads read w[k · inp + n0..+16] for rows k < out; each store writes the 32
        // values at (k/2) · 32 < out.div_ceil(2) · 32 ≤ panel.len().
        unsafe {
            while k < out {
                let a = _mm512_loadu_ps(w.as_ptr().add(k * inp + n0));
                let b = if k + 1 < out {
                    _mm512_loadu_ps(w.as_ptr().add((k + 1) * inp + n0))
                } else {
                    _mm512_setzero_ps()
                };
                let ha: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(a));
                let hb: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(b));
                let pairs = _mm512_or_si512(
                    _mm512_cvtepu16_epi32(ha),
                    _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hb)),
                );
                _mm512_storeu_si512(panel.as_mut_ptr().add((k >> 1) * 32).cast(), pairs);
                k += 2;
            }
        }
        true
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    pub unsafe fn round_row(_: &[f32], _: &mut [u16]) {
        unreachable!("AMX is never reported available off x86_64")
    }

    pub unsafe fn pack_rows_panel(_: &[f32], _: usize, _: usize, _: &mut [u16]) -> bool {
        unreachable!("AMX is never reported available off x86_64")
    }

    pub unsafe fn pack_cols_panel(_: &[f32], _: usize, _: usize, _: usize, _: &mut [u16]) -> bool {
        unreachable!("AMX is never reported available off x86_64")
    }

    pub unsafe fn dot_kernel(_: *const u16, _: usize, _: *const u16, _: usize, _: *mut f32, _: usize) {
        unreachable!("AVX512-BF16 is never reported available off x86_64")
    }
}

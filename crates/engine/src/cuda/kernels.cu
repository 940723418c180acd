// afinar's CUDA kernels, compiled at run time by NVRTC (see module.rs) for the card present.
//
// No CUDA header is included, so NVRTC needs no include path: bf16 values travel as their raw
// 16 bits (`bf16_t`), converted with the helpers below; f16 scales of GGUF blocks are converted
// with the PTX `cvt` instruction. Every kernel is `extern "C"` so the host finds it by name.
// Sizes are `int` for counts that fit a row or a tensor dimension and `long long` for element
// counts of whole buffers. Activations are f32; reductions accumulate in f32 (f64 for the sum
// of squares that feeds gradient clipping).

typedef unsigned short bf16_t;
typedef unsigned char u8;
typedef long long i64;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, as PyTorch and the CPU backend round f32 to bf16 (NaN stays NaN).
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even; overflow gives ±inf, as a conversion to torch.float16 does.
__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16_t* p, float v) { *p = f32_to_bf16(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or maximum, with MAX) over a block of up to 1024 threads (blockDim.x a multiple of 32);
// every thread gets the result.
template <bool MAX>
__device__ float block_reduce(float v) {
    __shared__ float part[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = MAX ? warp_max(v) : warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? part[lane] : (MAX ? NEG_INF : 0.0f);
        s = MAX ? warp_max(s) : warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

__device__ __forceinline__ float block_sum(float v) { return block_reduce<false>(v); }
__device__ __forceinline__ float block_max(float v) { return block_reduce<true>(v); }

#define GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

// ---- elementwise ------------------------------------------------------------------------------

extern "C" __global__ void fill_f32(float* y, i64 n, float v) {
    GRID_STRIDE(i, n) y[i] = v;
}

extern "C" __global__ void add_f32(float* y, const float* x, i64 n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}

extern "C" __global__ void scale_f32(float* y, i64 n, float s) {
    GRID_STRIDE(i, n) y[i] *= s;
}

extern "C" __global__ void f32_to_bf16_k(const float* x, bf16_t* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = f32_to_bf16(x[i]);
}

extern "C" __global__ void bf16_to_f32_k(const bf16_t* x, float* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = bf16_to_f32(x[i]);
}

extern "C" __global__ void f32_to_f16_k(const float* x, unsigned short* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = f32_to_f16(x[i]);
}

extern "C" __global__ void f16_to_f32_k(const unsigned short* x, float* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = f16_to_f32(x[i]);
}

extern "C" __global__ void swiglu_fwd(const float* gate, const float* up, float* out, i64 n) {
    GRID_STRIDE(i, n) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void swiglu_bwd(const float* dout, const float* gate, const float* up, float* dgate,
                                      float* dup, i64 n) {
    GRID_STRIDE(i, n) {
        float g = gate[i];
        float s = 1.0f / (1.0f + expf(-g));
        float silu = g * s;
        float d = dout[i];
        dup[i] = d * silu;
        dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

// Splitmix64 finaliser of (seed, i): the same mask as the CPU backend's `hash_uniform`.
__device__ __forceinline__ float hash_uniform(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed ^ (i * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) / (float)(1ull << 24);
}

extern "C" __global__ void dropout_k(const float* x, float* out, i64 n, float p, unsigned long long seed) {
    float scale = 1.0f / (1.0f - p);
    GRID_STRIDE(i, n) out[i] = hash_uniform(seed, (unsigned long long)i) < p ? 0.0f : x[i] * scale;
}

// Σ x² in f64: each block adds its partial sum to `*acc` (zeroed by the host).
extern "C" __global__ void sum_squares_k(const float* x, i64 n, double* acc) {
    double s = 0.0;
    GRID_STRIDE(i, n) {
        double v = x[i];
        s += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    __shared__ double part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += part[w];
        atomicAdd(acc, t);
    }
}

// One AdamW step in the order torch.optim.AdamW computes it (as the CPU backend does).
extern "C" __global__ void adamw_k(float* p, const float* g, float* m, float* v, i64 n, float decay, float b1,
                                   float b2, float eps, float step_size, float bc2_sqrt) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = m[i] + (gi - m[i]) * (1.0f - b1);
        float vi = v[i] * b2 + (1.0f - b2) * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

// ---- embedding --------------------------------------------------------------------------------

extern "C" __global__ void embedding_f32(const unsigned int* ids, const float* table, float* out, int n, int dim) {
    int r = blockIdx.x;
    if (r >= n) return;
    const float* src = table + (i64)ids[r] * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) out[(i64)r * dim + c] = src[c];
}

extern "C" __global__ void embedding_bf16(const unsigned int* ids, const bf16_t* table, float* out, int n, int dim) {
    int r = blockIdx.x;
    if (r >= n) return;
    const bf16_t* src = table + (i64)ids[r] * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) out[(i64)r * dim + c] = bf16_to_f32(src[c]);
}

extern "C" __global__ void embedding_bwd(const unsigned int* ids, const float* dout, float* dtable, int n, int dim) {
    int r = blockIdx.x;
    if (r >= n) return;
    float* dst = dtable + (i64)ids[r] * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) atomicAdd(dst + c, dout[(i64)r * dim + c]);
}

// ---- RMSNorm ----------------------------------------------------------------------------------

// One block per row.
extern "C" __global__ void rmsnorm_fwd(const float* x, const float* w, float* out, float* rstd, int rows, int dim,
                                       float eps) {
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * dim;
    float s = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) s += xr[c] * xr[c];
    s = block_sum(s);
    float rs = rsqrtf(s / dim + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) out[(i64)r * dim + c] = xr[c] * rs * w[c];
}

// dx (+)= rstd · g − x · rstd³ · mean(g · x), g = dout · w. One block per row.
extern "C" __global__ void rmsnorm_bwd_dx(const float* dout, const float* x, const float* w, const float* rstd,
                                          float* dx, int rows, int dim, int accumulate) {
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * dim;
    const float* dr = dout + (i64)r * dim;
    float s = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) s += dr[c] * w[c] * xr[c];
    s = block_sum(s);
    float rs = rstd[r];
    float k = rs * rs * rs * s / dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float v = rs * dr[c] * w[c] - xr[c] * k;
        i64 o = (i64)r * dim + c;
        dx[o] = accumulate ? dx[o] + v : v;
    }
}

// dw[c] += Σ_r dout[r, c] · x[r, c] · rstd[r]; blockIdx.y takes `rows_per` rows.
extern "C" __global__ void rmsnorm_bwd_dw(const float* dout, const float* x, const float* rstd, float* dw, int rows,
                                          int dim, int rows_per) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    int r0 = blockIdx.y * rows_per;
    int r1 = min(rows, r0 + rows_per);
    float s = 0.0f;
    for (int r = r0; r < r1; ++r) s += dout[(i64)r * dim + c] * x[(i64)r * dim + c] * rstd[r];
    atomicAdd(dw + c, s);
}

// ---- RoPE -------------------------------------------------------------------------------------

// x[tokens, heads, head_dim] rotated in place; one thread per (token, head, i < head_dim/2).
extern "C" __global__ void rope_k(float* x, const unsigned int* pos, const float* inv_freq, int tokens, int heads,
                                  int head_dim, int inverse) {
    int half = head_dim / 2;
    i64 n = (i64)tokens * heads * half;
    GRID_STRIDE(idx, n) {
        int i = (int)(idx % half);
        i64 th = idx / half;
        int t = (int)(th / heads);
        float a = (float)pos[t] * inv_freq[i];
        float c = cosf(a), s = sinf(a);
        if (inverse) s = -s;
        float* xh = x + th * head_dim;
        float x1 = xh[i], x2 = xh[i + half];
        xh[i] = x1 * c - x2 * s;
        xh[i + half] = x2 * c + x1 * s;
    }
}

// ---- cross-entropy ----------------------------------------------------------------------------

// One block per row of logits[rows, vocab]: loss = logsumexp − logit[target] (0 when the target
// is -100); with dlogits, grad_scale · (softmax − onehot) (zeros for ignored rows), where
// grad_scale is scales[r] when a per-row scale vector is given.
template <typename T>
__device__ void ce_row(const float* logits, const int* targets, float* losses, T* dlogits, int vocab, float grad_scale,
                       int r, const float* scales = nullptr) {
    if (scales) grad_scale = scales[r];
    const float* lr = logits + (i64)r * vocab;
    int t = targets[r];
    if (t < 0) {
        if (threadIdx.x == 0) losses[r] = 0.0f;
        if (dlogits)
            for (int c = threadIdx.x; c < vocab; c += blockDim.x) store(dlogits + (i64)r * vocab + c, 0.0f);
        return;
    }
    float m = NEG_INF;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) m = fmaxf(m, lr[c]);
    m = block_max(m);
    float s = 0.0f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) s += expf(lr[c] - m);
    s = block_sum(s);
    float lse = m + logf(s);
    if (threadIdx.x == 0) losses[r] = lse - lr[t];
    if (dlogits) {
        for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
            float p = expf(lr[c] - lse);
            store(dlogits + (i64)r * vocab + c, grad_scale * (p - (c == t ? 1.0f : 0.0f)));
        }
    }
}

extern "C" __global__ void ce_f32(const float* logits, const int* targets, float* losses, float* dlogits, int rows,
                                  int vocab, float grad_scale) {
    if ((int)blockIdx.x < rows) ce_row<float>(logits, targets, losses, dlogits, vocab, grad_scale, blockIdx.x);
}

extern "C" __global__ void ce_bf16(const float* logits, const int* targets, float* losses, bf16_t* dlogits, int rows,
                                   int vocab, float grad_scale) {
    if ((int)blockIdx.x < rows) ce_row<bf16_t>(logits, targets, losses, dlogits, vocab, grad_scale, blockIdx.x);
}

// ---- knowledge distillation (see distill.rs) ---------------------------------------------------

// log Σ e^(a·x) over a row of `vocab` values, for a > 0; every thread gets it.
__device__ float row_lse_scaled(const float* x, int vocab, float a) {
    float m = NEG_INF;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) m = fmaxf(m, x[c]);
    m = block_max(m) * a;
    float s = 0.0f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) s += expf(a * x[c] - m);
    return m + logf(block_sum(s));
}

// log(e^a + e^b) for finite a, b.
__device__ __forceinline__ float log_add_exp(float a, float b) {
    float hi = fmaxf(a, b), lo = fminf(a, b);
    return hi + log1pf(expf(lo - hi));
}

// One block per row of student logits s and teacher logits t (both [rows, vocab], f32), as
// cpu/distill.rs: for a kept row (target != -100) the divergence `div` (0 forward KL, 1 reverse KL,
// 2 JSD with β = ½) between softmax(inv_t·s) and softmax(inv_t·t) into kd[r], the student's
// cross-entropy on the untempered s into ce[r]; with dlogits, kd_scale·∂kd/∂s + ce_scale·∂ce/∂s
// (zero rows for ignored targets).
template <typename T>
__device__ void distill_row(const float* s_all, const float* t_all, const int* targets, float* kd_out,
                            float* ce_out, T* dlogits, int vocab, int div, float inv_t, float kd_scale,
                            float ce_scale, int r) {
    const float* s = s_all + (i64)r * vocab;
    const float* t = t_all + (i64)r * vocab;
    T* d = dlogits ? dlogits + (i64)r * vocab : nullptr;
    int y = targets[r];
    if (y < 0) {
        if (threadIdx.x == 0) {
            kd_out[r] = 0.0f;
            ce_out[r] = 0.0f;
        }
        if (d)
            for (int c = threadIdx.x; c < vocab; c += blockDim.x) store(d + c, 0.0f);
        return;
    }
    const float ln_half = -0.693147180559945f;
    float lse_raw = row_lse_scaled(s, vocab, 1.0f);
    float lse_s = inv_t == 1.0f ? lse_raw : row_lse_scaled(s, vocab, inv_t);
    float lse_t = row_lse_scaled(t, vocab, inv_t);
    float kd = 0.0f, gm = 0.0f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        float ls = inv_t * s[c] - lse_s, lt = inv_t * t[c] - lse_t;
        if (div == 0) {
            kd -= expf(lt) * ls;
        } else if (div == 1) {
            kd += expf(ls) * (ls - lt);
        } else {
            float ps = expf(ls), pt = expf(lt);
            float lm = log_add_exp(ls, lt) + ln_half;
            kd += 0.5f * (pt * (lt - lm) + ps * (ls - lm));
            gm += ps * 0.5f * (ls - lm);
        }
    }
    kd = block_sum(kd);
    // The mean of g under pS: the divergence itself for the reverse KL.
    if (div == 1) gm = kd;
    else if (div == 2) gm = block_sum(gm);
    if (threadIdx.x == 0) {
        kd_out[r] = kd;
        ce_out[r] = lse_raw - s[y];
    }
    if (!d) return;
    float ks = kd_scale * inv_t;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        float ls = inv_t * s[c] - lse_s, lt = inv_t * t[c] - lse_t;
        float ps = expf(ls);
        float dz;
        if (div == 0) dz = ps - expf(lt);
        else if (div == 1) dz = ps * (ls - lt - gm);
        else dz = ps * (0.5f * (ls - log_add_exp(ls, lt) - ln_half) - gm);
        float v = ks * dz;
        if (ce_scale != 0.0f) v += ce_scale * (expf(s[c] - lse_raw) - (c == y ? 1.0f : 0.0f));
        store(d + c, v);
    }
}

extern "C" __global__ void distill_f32(const float* s, const float* t, const int* targets, float* kd, float* ce,
                                       float* dlogits, int rows, int vocab, int div, float inv_t, float kd_scale,
                                       float ce_scale) {
    if ((int)blockIdx.x < rows)
        distill_row<float>(s, t, targets, kd, ce, dlogits, vocab, div, inv_t, kd_scale, ce_scale, blockIdx.x);
}

extern "C" __global__ void distill_bf16(const float* s, const float* t, const int* targets, float* kd, float* ce,
                                        bf16_t* dlogits, int rows, int vocab, int div, float inv_t, float kd_scale,
                                        float ce_scale) {
    if ((int)blockIdx.x < rows)
        distill_row<bf16_t>(s, t, targets, kd, ce, dlogits, vocab, div, inv_t, kd_scale, ce_scale, blockIdx.x);
}

// ce_f32 / ce_bf16 with one gradient scale per row (`scales[rows]`): the backward of per-token
// log-probabilities (scale = −∂L/∂logp).
extern "C" __global__ void ce_rows_f32(const float* logits, const int* targets, float* losses, float* dlogits,
                                       int rows, int vocab, const float* scales) {
    if ((int)blockIdx.x < rows) ce_row<float>(logits, targets, losses, dlogits, vocab, 0.0f, blockIdx.x, scales);
}

extern "C" __global__ void ce_rows_bf16(const float* logits, const int* targets, float* losses, bf16_t* dlogits,
                                        int rows, int vocab, const float* scales) {
    if ((int)blockIdx.x < rows) ce_row<bf16_t>(logits, targets, losses, dlogits, vocab, 0.0f, blockIdx.x, scales);
}

// ---- attention (see attention.rs) -------------------------------------------------------------

// Strided 4-D copy with conversion: element (a, x, y, i) of src goes to dst; i is contiguous.
// Used to move q/k/v between [b, t, g, G·d] and [b, g, t, G·d] layouts (as bf16) and back.
template <typename S, typename D>
__device__ void permute(const S* src, D* dst, int A, int X, int Y, int I, i64 s_a, i64 s_x, i64 s_y, i64 d_a, i64 d_x,
                        i64 d_y) {
    i64 n = (i64)A * X * Y * I;
    GRID_STRIDE(idx, n) {
        int i = (int)(idx % I);
        i64 r = idx / I;
        int y = (int)(r % Y);
        r /= Y;
        int x = (int)(r % X);
        int a = (int)(r / X);
        float v;
        if constexpr (sizeof(S) == 2) v = bf16_to_f32(src[a * s_a + x * s_x + y * s_y + i]);
        else v = src[a * s_a + x * s_x + y * s_y + i];
        store(dst + a * d_a + x * d_x + y * d_y + i, v);
    }
}

extern "C" __global__ void permute_f32_bf16(const float* src, bf16_t* dst, int A, int X, int Y, int I, i64 s_a,
                                            i64 s_x, i64 s_y, i64 d_a, i64 d_x, i64 d_y) {
    permute<float, bf16_t>(src, dst, A, X, Y, I, s_a, s_x, s_y, d_a, d_x, d_y);
}

extern "C" __global__ void permute_f32_f32(const float* src, float* dst, int A, int X, int Y, int I, i64 s_a, i64 s_x,
                                           i64 s_y, i64 d_a, i64 d_x, i64 d_y) {
    permute<float, float>(src, dst, A, X, Y, I, s_a, s_x, s_y, d_a, d_x, d_y);
}

// Whether query row `t` (absolute position `pos`) of sequence `b` sees key `s`.
__device__ __forceinline__ bool visible(const unsigned int* doc, int b, int kv_len, int pos, int s) {
    if (s > pos) return false;
    if (!doc) return true;
    const unsigned int* d = doc + (i64)b * kv_len;
    return d[s] == d[pos];
}

// Rows of one query chunk: scores S[i][(tl, j)][s] for batch item i = b·kv_heads + g, chunk row
// tl (query t0 + tl), group member j (query head h = g·G + j). One warp per row.
struct ChunkRow {
    int b, h, t, pos;
    i64 off;  // row start in the chunk's [items, rows_c · G, kv_c] matrices
};

__device__ __forceinline__ ChunkRow chunk_row(i64 row, int kv_heads, int G, int rows_c, int kv_c, int t0,
                                              int q_offset) {
    ChunkRow c;
    int per_item = rows_c * G;
    int item = (int)(row / per_item);
    int rem = (int)(row % per_item);
    int tl = rem / G, j = rem % G;
    c.b = item / kv_heads;
    c.h = (item % kv_heads) * G + j;
    c.t = t0 + tl;
    c.pos = q_offset + c.t;
    c.off = row * kv_c;
    return c;
}

// Forward softmax of a chunk: P = exp(scale · S − lse) as bf16 (0 where masked); lse written to
// lse[b, h, t] ([batch, q_heads, q_len]).
extern "C" __global__ void attn_softmax_fwd(const float* S, bf16_t* P, float* lse, const unsigned int* doc,
                                            i64 n_rows, int kv_heads, int G, int rows_c, int kv_c, int t0,
                                            int q_offset, int q_len, int kv_len, float scale) {
    i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n_rows) return;
    ChunkRow c = chunk_row(row, kv_heads, G, rows_c, kv_c, t0, q_offset);
    const float* sr = S + c.off;
    float m = NEG_INF;
    for (int s = lane; s < kv_c; s += 32)
        if (visible(doc, c.b, kv_len, c.pos, s)) m = fmaxf(m, sr[s] * scale);
    m = warp_max(m);
    float sum = 0.0f;
    for (int s = lane; s < kv_c; s += 32)
        if (visible(doc, c.b, kv_len, c.pos, s)) sum += expf(sr[s] * scale - m);
    sum = warp_sum(sum);
    float l = m + logf(sum);
    for (int s = lane; s < kv_c; s += 32)
        P[c.off + s] = f32_to_bf16(visible(doc, c.b, kv_len, c.pos, s) ? expf(sr[s] * scale - l) : 0.0f);
    if (lane == 0) lse[((i64)c.b * (kv_heads * G) + c.h) * q_len + c.t] = l;
}

// Backward of a chunk: recomputes P from S and lse, then dS = scale · P ∘ (dP − D) as bf16 into
// dSo, and P as bf16 into Po. D[b, h, t] = Σ_d dout · out.
extern "C" __global__ void attn_softmax_bwd(const float* S, const float* dP, const float* lse, const float* D,
                                            bf16_t* Po, bf16_t* dSo, const unsigned int* doc, i64 n_rows,
                                            int kv_heads, int G, int rows_c, int kv_c, int t0, int q_offset,
                                            int q_len, int kv_len, float scale) {
    i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n_rows) return;
    ChunkRow c = chunk_row(row, kv_heads, G, rows_c, kv_c, t0, q_offset);
    i64 li = ((i64)c.b * (kv_heads * G) + c.h) * q_len + c.t;
    float l = lse[li], dd = D[li];
    for (int s = lane; s < kv_c; s += 32) {
        float p = visible(doc, c.b, kv_len, c.pos, s) ? expf(S[c.off + s] * scale - l) : 0.0f;
        Po[c.off + s] = f32_to_bf16(p);
        dSo[c.off + s] = f32_to_bf16(scale * p * (dP[c.off + s] - dd));
    }
}

// D[b, h, t] = Σ_i dout[b, t, h, i] · out[b, t, h, i]; one warp per (b, t, h).
extern "C" __global__ void attn_rowdot(const float* dout, const float* out, float* D, int batch, int q_len, int heads,
                                       int head_dim) {
    i64 w = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (w >= (i64)batch * q_len * heads) return;
    const float* a = dout + w * head_dim;
    const float* o = out + w * head_dim;
    float s = 0.0f;
    for (int i = lane; i < head_dim; i += 32) s += a[i] * o[i];
    s = warp_sum(s);
    int h = (int)(w % heads);
    i64 bt = w / heads;
    int t = (int)(bt % q_len);
    int b = (int)(bt / q_len);
    if (lane == 0) D[((i64)b * heads + h) * q_len + t] = s;
}

// ---- quantized weights ------------------------------------------------------------------------

__device__ __forceinline__ unsigned short ld_u16(const u8* p) { return (unsigned short)(p[0] | (p[1] << 8)); }

__device__ __forceinline__ float ld_f32(const u8* p) {
    unsigned int u = p[0] | (p[1] << 8) | (p[2] << 16) | ((unsigned int)p[3] << 24);
    return __uint_as_float(u);
}

// Value `c` (< cols) of row `r` of a GGUF-block or NF4 matrix.
__device__ __forceinline__ float q8_0_at(const u8* w, i64 r, int cols, int c) {
    const u8* b = w + (r * (cols / 32) + c / 32) * 34;
    return f16_to_f32(ld_u16(b)) * (float)(signed char)b[2 + c % 32];
}

__device__ __forceinline__ float q4_0_at(const u8* w, i64 r, int cols, int c) {
    const u8* b = w + (r * (cols / 32) + c / 32) * 18;
    int j = c % 32;
    int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
    return f16_to_f32(ld_u16(b)) * (float)(q - 8);
}

__device__ __forceinline__ float q4_1_at(const u8* w, i64 r, int cols, int c) {
    const u8* b = w + (r * (cols / 32) + c / 32) * 20;
    int j = c % 32;
    int q = j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4);
    return f16_to_f32(ld_u16(b)) * (float)q + f16_to_f32(ld_u16(b + 2));
}

__constant__ float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};

// NF4 buffer (cpu/nf4.rs): packed nibbles (n/2 bytes, high nibble first), scale codes (n/64),
// nested f32 scales (⌈n/16384⌉), f32 offset; `dmap` is the 256-entry dynamic map.
__device__ __forceinline__ float nf4_at(const u8* w, i64 n, const float* dmap, i64 r, int cols, int c) {
    i64 k = r * cols + c;
    u8 byte = w[k >> 1];
    int q = (k & 1) ? (byte & 15) : (byte >> 4);
    i64 blk = k >> 6;
    i64 codes = n >> 1;
    i64 nested = codes + (n >> 6);
    i64 n_nested = ((n >> 6) + 255) >> 8;
    float absmax2 = ld_f32(w + nested + 4 * (blk >> 8));
    float offset = ld_f32(w + nested + 4 * n_nested);
    float absmax = dmap[w[codes + blk]] * absmax2 + offset;
    return NF4_CODE[q] * absmax;
}

// Dequantizes rows of a quantized matrix: out row i = weight row (ids ? ids[i] : row0 + i).
// fmt: 0 = q8_0, 1 = q4_0, 2 = q4_1, 3 = nf4 (n = rows · cols of the whole matrix, for NF4).
template <typename T>
__device__ void dequant(const u8* w, int fmt, i64 n, const float* dmap, const unsigned int* ids, i64 row0, int n_rows,
                        int cols, T* out) {
    i64 total = (i64)n_rows * cols;
    GRID_STRIDE(idx, total) {
        int c = (int)(idx % cols);
        i64 i = idx / cols;
        i64 r = ids ? (i64)ids[i] : row0 + i;
        float v;
        switch (fmt) {
            case 0: v = q8_0_at(w, r, cols, c); break;
            case 1: v = q4_0_at(w, r, cols, c); break;
            case 2: v = q4_1_at(w, r, cols, c); break;
            default: v = nf4_at(w, n, dmap, r, cols, c); break;
        }
        store(out + idx, v);
    }
}

extern "C" __global__ void dequant_f32(const u8* w, int fmt, i64 n, const float* dmap, const unsigned int* ids,
                                       i64 row0, int n_rows, int cols, float* out) {
    dequant<float>(w, fmt, n, dmap, ids, row0, n_rows, cols, out);
}

extern "C" __global__ void dequant_bf16(const u8* w, int fmt, i64 n, const float* dmap, const unsigned int* ids,
                                        i64 row0, int n_rows, int cols, bf16_t* out) {
    dequant<bf16_t>(w, fmt, n, dmap, ids, row0, n_rows, cols, out);
}

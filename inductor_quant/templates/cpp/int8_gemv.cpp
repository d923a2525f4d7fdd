// int8 weight-only GEMV-shaped GEMM for decode (small M): Y[M, N] = (X[M, K] @ W[N, K]^T) * S[N] (+ B[N]).
//
// Decode is bound by how fast the int8 weight streams from memory, so the kernel reads each weight byte once:
//   * threads split W into blocks of NR = 4 rows; a block is walked along K in steps of 32 values;
//   * each step widens 4 x 32 int8 weights (exactly) to bf16 or fp32 and multiplies them with every row of X
//     while they are in registers, accumulating in fp32;
//   * the scale (and bias) are applied once per output in fp32, then one rounding to Y's dtype.
// Where W lives is a matter of strides: weight (block b, row r, k) is at
//   W + b * 4K + r * RS + (k / 32) * KS + k % 32
// with RS = 32, KS = 128 for the layout prepacked at compile time ([N/4][K/32][4][32]: one contiguous stream per
// block) and RS = K, KS = 32 for a plain row-major [N, K] weight (four streams per block). With one bf16
// activation row, a plain weight is walked one row at a time instead: a thread's rows are one contiguous range of
// W, so that is one stream (2-core EPYC Zen 4, plain / packed time 0.97-1.05 at K = 4096 / 11008, 1.26 at K = 576,
// where the 4-row walk took 1.34-1.44 and 2.65).
// bf16 activations use AVX512-BF16 dot products (two MACs per lane); fp32 / fp16 activations use fp32 FMAs.
// ---
{{template.header().getvalue()}}
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <memory>

#include "amx_tiles.h"

#ifndef INDUCTOR_QUANT_INT8_GEMV_HELPERS
#define INDUCTOR_QUANT_INT8_GEMV_HELPERS  // a graph's kernels share one translation unit: define helpers once
namespace {
constexpr int64_t IQ_NR = 4;              // weight rows per block: 4 x MT accumulators in registers
constexpr int64_t IQ_KSTEP = 32;          // K values per step: one 32-byte run of each row
// Prefetch this many steps ahead: 4 KiB in the packed layout. Sweep on a 64-layer 4096x4096 stack (2 cores, Zen 5):
// 16 steps 35-40 GB/s at M=1 and 27-29 at M=4; 32 steps 39-55 and 36-39; 48 steps 40 and 38.
constexpr int64_t IQ_PREFETCH_STEPS = 32;
constexpr int64_t IQ_ROW_PREFETCH = 2048;  // bytes ahead in the row-wise walk (one stream)

#if defined(__AVX512F__)
// 32 int8 -> two halves of 16 fp32 (exact)
inline void iq_widen_f32(const int8_t* w, __m512& lo, __m512& hi) {
    lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
    hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16))));
}

// --- fp32 micro-kernel: acc[m][r] = sum_k X[m, k] * W[r, k] for MT rows of fp32 X ---
template <int MT>
inline void iq_dot_f32(const int8_t* const* wr, int64_t KS, int64_t K, const float* x, int64_t ldx, float* out) {
    __m512 acc[MT][IQ_NR];
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < IQ_NR; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k = 0, off = 0; k < K; k += IQ_KSTEP, off += KS) {
        for (int r = 0; r < IQ_NR; ++r) _mm_prefetch(reinterpret_cast<const char*>(wr[r] + off + IQ_PREFETCH_STEPS * KS), _MM_HINT_T0);
        __m512 lo[IQ_NR], hi[IQ_NR];
        for (int r = 0; r < IQ_NR; ++r) iq_widen_f32(wr[r] + off, lo[r], hi[r]);
        for (int m = 0; m < MT; ++m) {
            const __m512 x0 = _mm512_loadu_ps(x + m * ldx + k);
            const __m512 x1 = _mm512_loadu_ps(x + m * ldx + k + 16);
            for (int r = 0; r < IQ_NR; ++r) acc[m][r] = _mm512_fmadd_ps(x1, hi[r], _mm512_fmadd_ps(x0, lo[r], acc[m][r]));
        }
    }
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < IQ_NR; ++r) out[m * IQ_NR + r] = _mm512_reduce_add_ps(acc[m][r]);
}
#endif

#if defined(__AVX512BF16__)
// --- bf16 micro-kernel: same sums with bf16 X; int8 weights are exact in bf16, products exact, fp32 accumulate ---
template <int MT>
inline void iq_dot_bf16(const int8_t* const* wr, int64_t KS, int64_t K, const uint16_t* x, int64_t ldx, float* out) {
    __m512 acc[MT][IQ_NR];
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < IQ_NR; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k = 0, off = 0; k < K; k += IQ_KSTEP, off += KS) {
        for (int r = 0; r < IQ_NR; ++r) _mm_prefetch(reinterpret_cast<const char*>(wr[r] + off + IQ_PREFETCH_STEPS * KS), _MM_HINT_T0);
        __m512bh w[IQ_NR];
        for (int r = 0; r < IQ_NR; ++r) {
            __m512 lo, hi;
            iq_widen_f32(wr[r] + off, lo, hi);
            w[r] = _mm512_cvtne2ps_pbh(hi, lo);  // bf16 lanes in k order: [lo 0..15, hi 16..31]
        }
        for (int m = 0; m < MT; ++m) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
            for (int r = 0; r < IQ_NR; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, w[r]);
        }
    }
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < IQ_NR; ++r) out[m * IQ_NR + r] = _mm512_reduce_add_ps(acc[m][r]);
}
#endif

// M rows of X go through a micro-kernel in passes of at most MAX_MT rows, as even as possible (16 -> 6, 5, 5):
// a pass re-widens the block's weights, so fewer, fuller passes do less of that. bf16: 6 x 4 accumulators + 4
// weights + 1 activation fill 29 of the 32 registers; sweep with the weights in L2 (one Zen 5 core, GB/s of weight
// at M = 16): 9.4 in passes of 4, 11.6 in passes of 5-6, 10.5 in 7, 7, 2 (7 spills).
template <int MAX_MT, typename Pass>
inline void iq_passes(int64_t M, Pass&& pass) {
    const int64_t passes = (M + MAX_MT - 1) / MAX_MT;
    for (int64_t p = 0, m = 0; p < passes; ++p) {
        const int64_t mt = M / passes + (p < M % passes ? 1 : 0);
        pass(m, mt);
        m += mt;
    }
}

#if defined(__AVX512BF16__)
constexpr int IQ_MAX_MT_BF16 = 6;
inline void iq_dot_bf16_rows(int64_t mt, const int8_t* const* wr, int64_t KS, int64_t K, const uint16_t* x,
                             int64_t ldx, float* out) {
    switch (mt) {
        case 6: iq_dot_bf16<6>(wr, KS, K, x, ldx, out); break;
        case 5: iq_dot_bf16<5>(wr, KS, K, x, ldx, out); break;
        case 4: iq_dot_bf16<4>(wr, KS, K, x, ldx, out); break;
        case 3: iq_dot_bf16<3>(wr, KS, K, x, ldx, out); break;
        case 2: iq_dot_bf16<2>(wr, KS, K, x, ldx, out); break;
        default: iq_dot_bf16<1>(wr, KS, K, x, ldx, out); break;
    }
}
#endif

#if defined(__AVX512F__)
constexpr int IQ_MAX_MT_F32 = 4;  // 4 x 4 accumulators + 8 widened weights + 2 activations
inline void iq_dot_f32_rows(int64_t mt, const int8_t* const* wr, int64_t KS, int64_t K, const float* x,
                            int64_t ldx, float* out) {
    switch (mt) {
        case 4: iq_dot_f32<4>(wr, KS, K, x, ldx, out); break;
        case 3: iq_dot_f32<3>(wr, KS, K, x, ldx, out); break;
        case 2: iq_dot_f32<2>(wr, KS, K, x, ldx, out); break;
        default: iq_dot_f32<1>(wr, KS, K, x, ldx, out); break;
    }
}
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
// --- AMX (bf16 X, M <= 32): the weight is the A operand, X the B operand ---
// A step widens 32 weight rows x 32 values to bf16 (exact), two A tiles of 16 rows x 64 bytes, and multiplies them
// with X laid out as B tiles (row p: the pairs (X[m, 2p], X[m, 2p + 1]) of 16 activation rows m), accumulating
// C[r, m] = sum_k W[r, k] X[m, k] in fp32 tiles. Every weight is widened once whatever M is (the AVX512 passes
// widen it once per pass of 6 rows), and the tiles do the products.
// (tiles: amx_tiles.h, iq_amx::decode_step)
constexpr int64_t IQ_AMX_ROWS = 32;  // weight rows per block: 8 blocks of IQ_NR

// xp[p * 16 * MT + m] = the pair (X[m, 2p], X[m, 2p + 1]), zero for m >= M (MT tiles of 16 activation rows)
template <int MT>
inline void iq_amx_pack_x(const uint16_t* x, int64_t M, int64_t K, uint32_t* xp) {
    for (int64_t p = 0; p < K / 2; ++p)
        for (int64_t m = 0; m < 16 * MT; ++m) {
            uint32_t pair = 0;
            if (m < M) std::memcpy(&pair, x + m * K + 2 * p, 4);
            xp[p * 16 * MT + m] = pair;
        }
}

// c[r * 16 * MT + m] = sum_k W[r, k] X[m, k] for the 32 weight rows r whose first values are at wr[r]
template <int MT>
inline void iq_amx_block(const int8_t* const* wr, int64_t KS, int64_t K, const uint32_t* xp, float* c) {
    alignas(64) uint16_t a[IQ_AMX_ROWS * IQ_KSTEP];
    iq_amx::zero_sums<MT>();
    for (int64_t k = 0, off = 0; k < K; k += IQ_KSTEP, off += KS) {
        for (int r = 0; r < IQ_AMX_ROWS; ++r) {
            _mm_prefetch(reinterpret_cast<const char*>(wr[r] + off + IQ_PREFETCH_STEPS * KS), _MM_HINT_T0);
            __m512 lo, hi;
            iq_widen_f32(wr[r] + off, lo, hi);
            _mm512_store_si512(a + r * IQ_KSTEP, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
        iq_amx::decode_step<MT>(a, xp + (k / 2) * 16 * MT);
    }
    iq_amx::store_sums<MT>(c);
}
#endif

// --- portable fallback (no AVX512): same sums, scalar ---
template <typename XT>
inline void iq_dot_scalar(const int8_t* const* wr, int64_t KS, int64_t K, const XT* x, int64_t ldx, int64_t mt, float* out) {
    for (int64_t m = 0; m < mt; ++m)
        for (int r = 0; r < IQ_NR; ++r) {
            float s = 0.f;
            for (int64_t k = 0, off = 0; k < K; k += IQ_KSTEP, off += KS)
                for (int64_t j = 0; j < IQ_KSTEP; ++j) s += static_cast<float>(x[m * ldx + k + j]) * wr[r][off + j];
            out[m * IQ_NR + r] = s;
        }
}
}  // namespace
#endif  // INDUCTOR_QUANT_INT8_GEMV_HELPERS

extern "C" {{export_declaration}}
{{kernel.def_kernel(inputs={"X": X, "W": W, "S": S, "B": B}, outputs={"Y": Y}, aliases=None)}}
{
    // inductor_quant int8_gemv: M={{M}} N={{N}} K={{K}} weight={{ "packed" if packed else "row-major" }} bias={{ B is not none }}
    constexpr int64_t M = {{M}};
    constexpr int64_t N = {{N}};
    constexpr int64_t K = {{K}};             // a multiple of IQ_KSTEP
    constexpr int64_t RS = {{row_stride}};   // see the layout note above
    constexpr int64_t KS = {{step_stride}};
    constexpr int64_t n_blocks = (N + IQ_NR - 1) / IQ_NR;
{%- if x_is_bf16 %}
#if defined(__AVX512BF16__)
#define IQ_PATH_BF16 1
    const uint16_t* xk = reinterpret_cast<const uint16_t*>(X);  // bf16 bits, read as they are
#endif
{%- elif x_is_f32 %}
    const float* xk = X;
#define IQ_X_READY 1
{%- endif %}
#if !defined(IQ_PATH_BF16) && !defined(IQ_X_READY)
    // widen the (small) activations to fp32 once
    std::unique_ptr<float[]> x_owner(new float[M * K]);
    float* xk = x_owner.get();
    for (int64_t i = 0; i < M * K; ++i) xk[i] = static_cast<float>(X[i]);
#endif

{%- if amx %}
#if defined(IQ_PATH_BF16) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define IQ_PATH_AMX 1
    // AMX tiles (the CPU has them; INDUCTOR_QUANT_CPU_ISA=avx512 renders only the AVX512 kernel below, which also
    // runs if the OS refuses this process the tile state)
    if (iq_amx::permitted()) {
        constexpr int MT = M > 16 ? 2 : 1;
        std::unique_ptr<uint32_t[]> xp_owner(new uint32_t[(K / 2) * 16 * MT]);
        iq_amx_pack_x<MT>(xk, M, K, xp_owner.get());
        const uint32_t* xp = xp_owner.get();
        constexpr int64_t n_blocks32 = (N + IQ_AMX_ROWS - 1) / IQ_AMX_ROWS;
        #pragma omp parallel num_threads({{num_threads}})
        {
            iq_amx::configure();
            #pragma omp for schedule(static)
            for (int64_t nb = 0; nb < n_blocks32; ++nb) {
                const int64_t n0 = nb * IQ_AMX_ROWS;
                const int64_t rows = std::min<int64_t>(IQ_AMX_ROWS, N - n0);
                // rows past N (the last block of a weight) re-read row N - 1; their sums are dropped
                const int8_t* wr[IQ_AMX_ROWS];
                for (int64_t r = 0; r < IQ_AMX_ROWS; ++r) {
                    const int64_t n = std::min<int64_t>(n0 + r, N - 1);
                    wr[r] = W + n / IQ_NR * IQ_NR * K + n % IQ_NR * RS;
                }
                alignas(64) float acc[IQ_AMX_ROWS * 16 * MT];
                iq_amx_block<MT>(wr, KS, K, xp, acc);
                for (int64_t mm = 0; mm < M; ++mm)
                    for (int64_t r = 0; r < rows; ++r) {
                        const float out = {{ epilogue("acc[r * 16 * MT + mm]", "S[n0 + r]", "B[n0 + r]" if B is not none else none) }};
                        Y[mm * N + n0 + r] = static_cast<{{kernel.dtype(Y)}}>(out);
                    }
            }
            _tile_release();
        }
    } else
#endif
    {
{%- endif %}
{%- if not packed and M == 1 and x_is_bf16 %}
#if defined(IQ_PATH_BF16)
#define IQ_ROWWISE 1
    // plain row-major weight, one activation row: a thread walks its rows one at a time (its rows are one
    // contiguous range of W: a single stream, as in the packed layout)
    #pragma omp parallel for num_threads({{num_threads}}) schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        const int8_t* w = W + n * K;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 2 * IQ_KSTEP <= K; k += 2 * IQ_KSTEP) {
            _mm_prefetch(reinterpret_cast<const char*>(w + k + IQ_ROW_PREFETCH), _MM_HINT_T0);
            __m512 lo, hi;
            iq_widen_f32(w + k, lo, hi);
            const __m512bh w0 = _mm512_cvtne2ps_pbh(hi, lo);
            iq_widen_f32(w + k + IQ_KSTEP, lo, hi);
            const __m512bh w1 = _mm512_cvtne2ps_pbh(hi, lo);
            acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)_mm512_loadu_si512(xk + k), w0);
            acc1 = _mm512_dpbf16_ps(acc1, (__m512bh)_mm512_loadu_si512(xk + k + IQ_KSTEP), w1);
        }
        for (; k < K; k += IQ_KSTEP) {
            __m512 lo, hi;
            iq_widen_f32(w + k, lo, hi);
            acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)_mm512_loadu_si512(xk + k), _mm512_cvtne2ps_pbh(hi, lo));
        }
        const float acc = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        const float out = {{ epilogue("acc", "S[n]", "B[n]" if B is not none else none) }};
        Y[n] = static_cast<{{kernel.dtype(Y)}}>(out);
    }
#endif
#if !defined(IQ_ROWWISE)
{%- endif %}
    #pragma omp parallel for num_threads({{num_threads}}) schedule(static)
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
        const int64_t n0 = nb * IQ_NR;
        const int64_t rows = std::min<int64_t>(IQ_NR, N - n0);
        // rows past N (last block of a row-major weight) re-read the last row; their sums are dropped
        const int8_t* wr[IQ_NR];
        for (int64_t r = 0; r < IQ_NR; ++r) wr[r] = W + n0 * K + std::min<int64_t>(r, rows - 1) * RS;
        alignas(64) float acc[M * IQ_NR];
#if defined(IQ_PATH_BF16)
        iq_passes<IQ_MAX_MT_BF16>(M, [&](int64_t m, int64_t mt) {
            iq_dot_bf16_rows(mt, wr, KS, K, xk + m * K, K, acc + m * IQ_NR);
        });
#elif defined(__AVX512F__)
        iq_passes<IQ_MAX_MT_F32>(M, [&](int64_t m, int64_t mt) {
            iq_dot_f32_rows(mt, wr, KS, K, xk + m * K, K, acc + m * IQ_NR);
        });
#else
        iq_dot_scalar(wr, KS, K, xk, K, M, acc);
#endif
        // --- epilogue: * scale (+ bias) in fp32, one rounding to Y's dtype ---
        for (int64_t mm = 0; mm < M; ++mm)
            for (int64_t r = 0; r < rows; ++r) {
                const float out = {{ epilogue("acc[mm * IQ_NR + r]", "S[n0 + r]", "B[n0 + r]" if B is not none else none) }};
                Y[mm * N + n0 + r] = static_cast<{{kernel.dtype(Y)}}>(out);
            }
    }
{%- if not packed and M == 1 and x_is_bf16 %}
#endif
#undef IQ_ROWWISE
{%- endif %}
{%- if amx %}
    }
#undef IQ_PATH_AMX
{%- endif %}
{%- if epilogue_nodes %}
    // --- fused epilogue nodes (activation, residual, ...) over the whole output ---
    {{ store_epilogue() }}
{%- endif %}
#undef IQ_PATH_BF16
#undef IQ_X_READY
}

// Ternary (1.58-bit) GEMV-shaped GEMM for decode (small M) with int8 activations:
//   Y[M, N] = (X[M, K] @ T[N, K]^T) * XS[M] * WS[N or 1] (+ B[N]),   X int8, T in {-1, 0, +1}.
//
// The weight is read as packed by primitives.pack_ternary: row n is KP bytes, one 64-byte block per 256 values of K,
// each byte holding four 2-bit codes c = t + 1 in {0, 1, 2}; byte i of a block holds k = i, 64+i, 128+i, 192+i.
// Shifting a block right by 2p and masking every byte to 2 bits gives the codes of k in [64p, 64p + 64) in order,
// so one 64-byte load of X lines up with them. VNNI's vpdpbusd multiplies the unsigned codes by the signed int8
// activations and adds four products into each int32 lane: sum_k c * x = sum_k t * x + sum_k x. The kernel
// subtracts each activation row's sum once per output; the int32 sums are exact.
// Threads split the weight into blocks of NR = 4 rows; each block streams its rows once for all M rows of X.
// ---
{{template.header().getvalue()}}
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <memory>

#ifndef INDUCTOR_QUANT_TERNARY_GEMV_HELPERS
#define INDUCTOR_QUANT_TERNARY_GEMV_HELPERS  // a graph's kernels share one translation unit: define helpers once
namespace {
constexpr int64_t IQT_NR = 4;             // weight rows per block: 4 x MT int32 accumulators in registers
constexpr int64_t IQT_BLOCK_K = 256;      // K values per 64-byte block of a packed row
constexpr int64_t IQT_BLOCK_BYTES = 64;
constexpr int64_t IQT_PREFETCH_BLOCKS = 32;  // 1 KiB ahead on each of the 4 row streams

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// acc[m][r] = sum_k c[r, k] * x[m, k] over n_kb blocks, c the 2-bit codes
template <int MT>
inline void iqt_dot_vnni(const uint8_t* const* wr, int64_t n_kb, const int8_t* x, int64_t ldx, int32_t* out) {
    __m512i acc[MT][IQT_NR];
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < IQT_NR; ++r) acc[m][r] = _mm512_setzero_si512();
    const __m512i two_bits = _mm512_set1_epi8(3);
    for (int64_t b = 0; b < n_kb; ++b) {
        const int64_t off = b * IQT_BLOCK_BYTES;
        __m512i w[IQT_NR];
        for (int r = 0; r < IQT_NR; ++r) {
            _mm_prefetch(reinterpret_cast<const char*>(wr[r] + off + IQT_PREFETCH_BLOCKS * IQT_BLOCK_BYTES), _MM_HINT_T0);
            w[r] = _mm512_loadu_si512(wr[r] + off);
        }
        const int8_t* xb = x + b * IQT_BLOCK_K;
        for (int p = 0; p < 4; ++p) {
            __m512i c[IQT_NR];
            for (int r = 0; r < IQT_NR; ++r) {
                c[r] = _mm512_and_si512(w[r], two_bits);
                w[r] = _mm512_srli_epi16(w[r], 2);  // 16-bit lanes: the bits that cross bytes are masked off next
            }
            for (int m = 0; m < MT; ++m) {
                const __m512i xv = _mm512_loadu_si512(xb + m * ldx + p * 64);
                for (int r = 0; r < IQT_NR; ++r) acc[m][r] = _mm512_dpbusd_epi32(acc[m][r], c[r], xv);
            }
        }
    }
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < IQT_NR; ++r) out[m * IQT_NR + r] = _mm512_reduce_add_epi32(acc[m][r]);
}
#endif

// --- portable fallback (no AVX512-VNNI): same sums, scalar ---
inline void iqt_dot_scalar(const uint8_t* const* wr, int64_t n_kb, const int8_t* x, int64_t ldx, int64_t mt, int32_t* out) {
    for (int64_t m = 0; m < mt; ++m)
        for (int r = 0; r < IQT_NR; ++r) {
            int32_t s = 0;
            for (int64_t b = 0; b < n_kb; ++b)
                for (int p = 0; p < 4; ++p)
                    for (int64_t i = 0; i < 64; ++i)
                        s += ((wr[r][b * IQT_BLOCK_BYTES + i] >> (2 * p)) & 3) * x[m * ldx + b * IQT_BLOCK_K + p * 64 + i];
            out[m * IQT_NR + r] = s;
        }
}
}  // namespace
#endif  // INDUCTOR_QUANT_TERNARY_GEMV_HELPERS

extern "C" {{export_declaration}}
{{kernel.def_kernel(inputs={"X": X, "XS": XS, "W": W, "WS": WS, "B": B}, outputs={"Y": Y}, aliases=None)}}
{
    // inductor_quant ternary_gemv: M={{M}} N={{N}} K={{K}} weight_scale={{ "per_tensor" if per_tensor_scale else "per_channel" }} bias={{ B is not none }}
    constexpr int64_t M = {{M}};
    constexpr int64_t N = {{N}};
    constexpr int64_t K = {{K}};
    constexpr int64_t KP = {{packed_k}};              // bytes per packed row
    constexpr int64_t KPAD = KP * 4;                  // K rounded up to whole 256-value blocks
    constexpr int64_t n_kb = KP / IQT_BLOCK_BYTES;
    constexpr int64_t n_blocks = (N + IQT_NR - 1) / IQT_NR;
    // the activation rows, zero-padded to KPAD when K is not a whole number of blocks, and their sums
    const int8_t* xk = X;
    std::unique_ptr<int8_t[]> x_owner;
    if constexpr (KPAD != K) {
        x_owner.reset(new int8_t[M * KPAD]());
        for (int64_t m = 0; m < M; ++m) std::memcpy(x_owner.get() + m * KPAD, X + m * K, K);
        xk = x_owner.get();
    }
    int32_t xsum[M];
    for (int64_t m = 0; m < M; ++m) {
        int32_t s = 0;
        for (int64_t k = 0; k < K; ++k) s += X[m * K + k];
        xsum[m] = s;
    }

    #pragma omp parallel for num_threads({{num_threads}}) schedule(static)
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
        const int64_t n0 = nb * IQT_NR;
        const int64_t rows = std::min<int64_t>(IQT_NR, N - n0);
        // rows past N (last block) re-read the last row; their sums are dropped
        const uint8_t* wr[IQT_NR];
        for (int64_t r = 0; r < IQT_NR; ++r) wr[r] = W + (n0 + std::min<int64_t>(r, rows - 1)) * KP;
        alignas(64) int32_t acc[M * IQT_NR];
        int64_t m = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
        for (; m + 4 <= M; m += 4) iqt_dot_vnni<4>(wr, n_kb, xk + m * KPAD, KPAD, acc + m * IQT_NR);
        switch (M - m) {
            case 3: iqt_dot_vnni<3>(wr, n_kb, xk + m * KPAD, KPAD, acc + m * IQT_NR); break;
            case 2: iqt_dot_vnni<2>(wr, n_kb, xk + m * KPAD, KPAD, acc + m * IQT_NR); break;
            case 1: iqt_dot_vnni<1>(wr, n_kb, xk + m * KPAD, KPAD, acc + m * IQT_NR); break;
            default: break;
        }
#else
        iqt_dot_scalar(wr, n_kb, xk, KPAD, M, acc);
#endif
        // --- epilogue: remove the code offset, * activation scale * weight scale (+ bias) in fp32 ---
        for (int64_t mm = 0; mm < M; ++mm)
            for (int64_t r = 0; r < rows; ++r) {
                const float dot = static_cast<float>(acc[mm * IQT_NR + r] - xsum[mm]);
                const float out = {{ epilogue("dot * static_cast<float>(XS[mm])", "WS[0]" if per_tensor_scale else "WS[n0 + r]", "B[n0 + r]" if B is not none else none) }};
                Y[mm * N + n0 + r] = static_cast<{{kernel.dtype(Y)}}>(out);
            }
    }
{%- if epilogue_nodes %}
    // --- fused epilogue nodes (activation, residual, ...) over the whole output ---
    {{ store_epilogue() }}
{%- endif %}
}

// W4A8 decode kernel on the prepacked "lane per output" layout: int4 groupwise weights, int8 activations.
//   Y[m, n] = XS[m] * sum_g s[n, g] * sum_{k in g} X[m, k] * (q[n, k] - zp[n, g])  (+ B[n])
//
// The weight is packed at compile time (primitives.pack_int4_lanes) in blocks of 16 output rows: 32-bit lane i of
// a 64-byte vector belongs to row n0 + i and holds 8 consecutive k of it, k .. k + 3 in the low nibbles of its four
// bytes and k + 4 .. k + 7 in the high nibbles. So a mask (and a shift) gives 16 rows x 4 k of unsigned codes, which
// go straight into AVX512-VNNI vpdpbusd against 4 activation bytes broadcast to every lane: 16 outputs advance per
// instruction, with no horizontal sums and no reordering of the activations. At the end of each group the exact int32
// sums take the zero point (- zp * xsum, xsum the group's sum of X, exact in fp32) and the group scale (fp32 FMA),
// for all 16 rows at once; the group's scales and zero points are stored as 16 consecutive values per block
// ([N / 16][G][16]). XS, the bias and Y's rounding follow once per output.
// Threads split the blocks; activation rows go 8 at a time (accumulators in registers), the block re-read from cache.
// ---
{{template.header().getvalue()}}
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <memory>

#ifndef INDUCTOR_QUANT_INT4_A8_GEMV_HELPERS
#define INDUCTOR_QUANT_INT4_A8_GEMV_HELPERS  // a graph's kernels share one translation unit: define helpers once
namespace {
constexpr int64_t IQ4L_ROWS = 16;             // output rows per block: one per 32-bit lane
constexpr int64_t IQ4L_KSTEP = 8;             // k values per 64-byte vector (4 low nibbles + 4 high per lane)
constexpr int64_t IQ4L_MT = 8;                // activation rows per pass
constexpr int64_t IQ4L_PREFETCH_BYTES = 4096; // ahead in the block's stream (2-8 KiB measured alike, within this host's noise)

// element kinds of S and Z (IqKind of int4_gemv.cpp)
enum Iq4lKind { IQ4L_F32 = 0, IQ4L_BF16 = 1, IQ4L_F16 = 2, IQ4L_U8 = 3 };

template <int KIND>
inline float iq4l_get(const void* p, int64_t i) {
    if constexpr (KIND == IQ4L_F32) {
        return static_cast<const float*>(p)[i];
    } else if constexpr (KIND == IQ4L_BF16) {
        uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    } else if constexpr (KIND == IQ4L_F16) {
        return static_cast<float>(static_cast<const _Float16*>(p)[i]);
    } else {
        return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// 16 elements of kind KIND from p + i, widened to fp32 lanes
template <int KIND>
inline __m512 iq4l_load16(const void* p, int64_t i) {
    if constexpr (KIND == IQ4L_F32) {
        return _mm512_loadu_ps(static_cast<const float*>(p) + i);
    } else if constexpr (KIND == IQ4L_BF16) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else if constexpr (KIND == IQ4L_F16) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
    } else {
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(p) + i))));
    }
}

// out[m][lane] = sum_g s[g] * (dot_g(X[m], q) - zp[g] * xsum[m, g]) for MT rows of X and the 16 rows of a block.
// One or two rows of X alone would chain every vpdpbusd on one accumulator: they get CH independent chains.
template <int MT, int GS, int S_KIND, int Z_KIND>
inline void iq4l_block(const uint8_t* w, const int8_t* x, int64_t K, const float* xsum, const void* S,
                       const void* Z, int64_t sz, float* out) {
    constexpr int CH = MT == 1 ? 4 : (MT == 2 ? 2 : 1);
    constexpr int64_t STEPS = GS / IQ4L_KSTEP;  // 64-byte vectors per group: 4 .. 32, a multiple of CH
    const int64_t G = K / GS;
    const __m512i nib = _mm512_set1_epi8(0x0F);
    __m512 o[MT];
    for (int m = 0; m < MT; ++m) o[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
        __m512i acc[CH][MT];
        for (int c = 0; c < CH; ++c)
            for (int m = 0; m < MT; ++m) acc[c][m] = _mm512_setzero_si512();
        const uint8_t* wg = w + g * STEPS * 64;
        const int8_t* xg = x + g * GS;
        // steps t0 + c go to chain c: c is a compile-time index, so the accumulators stay in registers
        for (int64_t t0 = 0; t0 < STEPS; t0 += CH) {
            for (int c = 0; c < CH; ++c) {
                const int64_t t = t0 + c;
                _mm_prefetch(reinterpret_cast<const char*>(wg + t * 64 + IQ4L_PREFETCH_BYTES), _MM_HINT_T0);
                const __m512i v = _mm512_loadu_si512(wg + t * 64);
                const __m512i lo = _mm512_and_si512(v, nib);
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                for (int m = 0; m < MT; ++m) {
                    int32_t x0, x1;
                    std::memcpy(&x0, xg + m * K + t * IQ4L_KSTEP, 4);
                    std::memcpy(&x1, xg + m * K + t * IQ4L_KSTEP + 4, 4);
                    acc[c][m] = _mm512_dpbusd_epi32(acc[c][m], lo, _mm512_set1_epi32(x0));
                    acc[c][m] = _mm512_dpbusd_epi32(acc[c][m], hi, _mm512_set1_epi32(x1));
                }
            }
        }
        const __m512 s = iq4l_load16<S_KIND>(S, sz + g * IQ4L_ROWS);
        const __m512 z = iq4l_load16<Z_KIND>(Z, sz + g * IQ4L_ROWS);
        for (int m = 0; m < MT; ++m) {
            __m512i sum = acc[0][m];
            for (int c = 1; c < CH; ++c) sum = _mm512_add_epi32(sum, acc[c][m]);
            // exact: |sum|, zp * xsum < 2^24
            const __m512 d = _mm512_fnmadd_ps(z, _mm512_set1_ps(xsum[m * G + g]), _mm512_cvtepi32_ps(sum));
            o[m] = _mm512_fmadd_ps(d, s, o[m]);
        }
    }
    for (int m = 0; m < MT; ++m) _mm512_storeu_ps(out + m * IQ4L_ROWS, o[m]);
}

#endif

// --- portable fallback (no AVX512-VNNI): the same sums, scalar ---
template <int S_KIND, int Z_KIND>
inline void iq4l_rows_scalar(int mt, int64_t GS, const uint8_t* w, const int8_t* x, int64_t K, const float* xsum,
                             const void* S, const void* Z, int64_t sz, float* out) {
    const int64_t G = K / GS;
    for (int m = 0; m < mt; ++m)
        for (int64_t r = 0; r < IQ4L_ROWS; ++r) {
            float total = 0.f;
            for (int64_t g = 0; g < G; ++g) {
                int32_t dot = 0;
                for (int64_t k = g * GS; k < (g + 1) * GS; ++k) {
                    const uint8_t b = w[(k / IQ4L_KSTEP) * 64 + r * 4 + k % 4];
                    const int32_t q = (k % IQ4L_KSTEP) < 4 ? (b & 0xF) : (b >> 4);
                    dot += q * x[m * K + k];
                }
                const float d = static_cast<float>(dot) - iq4l_get<Z_KIND>(Z, sz + g * IQ4L_ROWS + r) * xsum[m * G + g];
                total += d * iq4l_get<S_KIND>(S, sz + g * IQ4L_ROWS + r);
            }
            out[m * IQ4L_ROWS + r] = total;
        }
}
}  // namespace
#endif  // INDUCTOR_QUANT_INT4_A8_GEMV_HELPERS

extern "C" {{export_declaration}}
{{kernel.def_kernel(inputs={"X": X, "XS": XS, "W": W, "S": S, "Z": Z, "B": B}, outputs={"Y": Y}, aliases=None)}}
{
    // inductor_quant int4_a8_gemv: M={{M}} N={{N}} K={{K}} group={{GS}} weight=lanes bias={{ B is not none }}
    constexpr int64_t M = {{M}};
    constexpr int64_t N = {{N}};
    constexpr int64_t K = {{K}};               // a multiple of GS
    constexpr int64_t GS = {{GS}};             // group size: 32, 64, 128 or 256
    constexpr int64_t G = K / GS;
    constexpr int S_KIND = {{s_kind}};
    constexpr int Z_KIND = {{z_kind}};
    constexpr int64_t n_blocks = (N + IQ4L_ROWS - 1) / IQ4L_ROWS;
    // --- once per call: the activations' integer sum per group (exact in fp32) ---
    std::unique_ptr<float[]> xsum_owner(new float[M * G]);
    float* xsum = xsum_owner.get();
    for (int64_t m = 0; m < M; ++m)
        for (int64_t g = 0; g < G; ++g) {
            int32_t s = 0;
            for (int64_t k = g * GS; k < (g + 1) * GS; ++k) s += X[m * K + k];
            xsum[m * G + g] = static_cast<float>(s);
        }

    #pragma omp parallel for num_threads({{num_threads}}) schedule(static)
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
        const int64_t n0 = nb * IQ4L_ROWS;
        const int64_t rows = std::min<int64_t>(IQ4L_ROWS, N - n0);
        const uint8_t* wb = W + nb * IQ4L_ROWS * (K / 2);
        const int64_t sz = nb * G * IQ4L_ROWS;  // this block's scales and zero points
        alignas(64) float acc[M * IQ4L_ROWS];
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
        // rows of X in passes of IQ4L_MT, then the rest: only the pass sizes this M needs are instantiated
        int64_t m0 = 0;
{%- set m_pass = 8 %}{#- IQ4L_MT #}
{%- if M >= m_pass %}
        for (; m0 + IQ4L_MT <= M; m0 += IQ4L_MT)
            iq4l_block<IQ4L_MT, GS, S_KIND, Z_KIND>(wb, X + m0 * K, K, xsum + m0 * G, S, Z, sz, acc + m0 * IQ4L_ROWS);
{%- endif %}
{%- if M % m_pass %}
        iq4l_block<{{ M % m_pass }}, GS, S_KIND, Z_KIND>(wb, X + m0 * K, K, xsum + m0 * G, S, Z, sz, acc + m0 * IQ4L_ROWS);
{%- endif %}
#else
        for (int64_t m0 = 0; m0 < M; m0 += IQ4L_MT) {
            const int mt = static_cast<int>(std::min<int64_t>(IQ4L_MT, M - m0));
            iq4l_rows_scalar<S_KIND, Z_KIND>(mt, GS, wb, X + m0 * K, K, xsum + m0 * G, S, Z, sz, acc + m0 * IQ4L_ROWS);
        }
#endif
        // --- epilogue: * XS[m] (+ bias) in fp32, one rounding to Y's dtype ---
        for (int64_t mm = 0; mm < M; ++mm)
            for (int64_t r = 0; r < rows; ++r) {
                const float out = {{ epilogue("acc[mm * IQ4L_ROWS + r]", "XS[mm]", "B[n0 + r]" if B is not none else none) }};
                Y[mm * N + n0 + r] = static_cast<{{kernel.dtype(Y)}}>(out);
            }
    }
{%- if epilogue_nodes %}
    // --- fused epilogue nodes (activation, residual, ...) over the whole output ---
    {{ store_epilogue() }}
{%- endif %}
}

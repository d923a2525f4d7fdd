// int4 groupwise weight-only GEMV-shaped GEMM for decode (small M):
//   Y[m, n] = sum_k X[m, k] * (q[n, k] - zp[n, g]) * s[n, g] (+ B[n]),  g = k / GS.
//
// Decode is bound by unpacking (2 cores) or by memory, so the kernel unpacks each weight byte once and splits the
// sum per group as
//   sum_g s[n, g] * dot_g(X[m], q[n])  -  sum_g s[n, g] * zp[n, g] * xsum[m, g],    xsum[m, g] = sum_{k in g} X[m, k]
// The first term is the vector loop: threads split W into blocks of NR = 4 rows, walked along K 128 values (64
// bytes, one cache line per row) at a time; each step unpacks the nibbles with shifts and masks (no shuffles, see
// the plane note below) and multiplies them with every row of X while they are in registers. The second term is a
// short dot product over groups, once per output.
//   * bf16 activations (AVX512-BF16): a nibble q becomes the bf16 number 128 + q with one OR (0x4300 | q); the
//     extra 128 is folded into the zero point (zp + 128). Products bf16 x bf16 are exact, sums fp32.
//   * fp32 / fp16 activations: nibbles widened to fp32 (exact), fp32 FMAs; fp16 X is widened to fp32 once.
//   * int8 activations (W4A8, with their per-row scale XS; AVX512-VNNI): the nibbles stay unsigned bytes and go
//     straight into vpdpbusd against the signed activations, exact int32 sums per group, then the group scale in
//     fp32; the result is multiplied by XS[m]. Without VNNI the int8 rows are widened to fp32 (exact).
// The activations are permuted once per call into the order the planes come out in.
// Where W lives is a matter of strides: step t of row r of block b is at W + b * 2KP + r * RS + t * KS, with
// RS = 64, KS = 256 for the layout prepacked at compile time ([N/4][K/128][4][64 bytes], one stream per block)
// and RS = K / 2, KS = 64 for the plain [N, K / 2] storage of a weight that is a graph input.
// ---
{{template.header().getvalue()}}
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <memory>

#include "amx_tiles.h"

#ifndef INDUCTOR_QUANT_INT4_GEMV_HELPERS
#define INDUCTOR_QUANT_INT4_GEMV_HELPERS  // a graph's kernels share one translation unit: define helpers once
namespace {
constexpr int64_t IQ4_NR = 4;              // weight rows per block
constexpr int64_t IQ4_STEP = 128;          // K values per step: 64 bytes (one cache line) of each row
constexpr int64_t IQ4_PREFETCH_STEPS = 16; // 4 KiB ahead in the packed layout (as the int8 kernel)
constexpr int64_t IQ4_COEF_AHEAD = 2;      // scales / zero points are prefetched this many blocks ahead

// element kinds of S and Z, fixed per kernel by the template; IQ_OFFSET: Z is an fp32 offset c, W = q * s + c
enum IqKind { IQ_F32 = 0, IQ_BF16 = 1, IQ_F16 = 2, IQ_U8 = 3, IQ_OFFSET = 4 };

template <int KIND>
inline float iq4_get(const void* p, int64_t i) {
    if constexpr (KIND == IQ_F32) {
        return static_cast<const float*>(p)[i];
    } else if constexpr (KIND == IQ_BF16) {
        uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    } else if constexpr (KIND == IQ_F16) {
        return static_cast<float>(static_cast<const _Float16*>(p)[i]);
    } else {
        return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    }
}

#if defined(__AVX512F__)
// n (<= 16) elements of kind KIND from p + i, widened to fp32 lanes (the rest zero)
template <int KIND>
inline __m512 iq4_load16(const void* p, int64_t i, int64_t n) {
    if (n >= 16) {  // plain loads where possible: masked ones are slow on this class of machine
        if constexpr (KIND == IQ_F32) {
            return _mm512_loadu_ps(static_cast<const float*>(p) + i);
        } else if constexpr (KIND == IQ_BF16) {
            const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
            return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        } else if constexpr (KIND == IQ_F16) {
            return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
        } else {
            return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(p) + i))));
        }
    }
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    if constexpr (KIND == IQ_F32) {
        return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(p) + i);
    } else if constexpr (KIND == IQ_BF16) {
        const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(p) + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else if constexpr (KIND == IQ_F16) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(p) + i));
    } else {
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, static_cast<const uint8_t*>(p) + i)));
    }
}

inline void iq4_store16(float* p, __m512 v, int64_t n) {
    if (n >= 16) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
}
#endif

template <int KIND>
constexpr int64_t iq4_elem_bytes() {
    return KIND == IQ_F32 || KIND == IQ_OFFSET ? 4 : KIND == IQ_U8 ? 1 : 2;
}

// Pull rows [row, row + rows) of a [N, G] scale / zero-point tensor towards the cache ahead of their block: they
// are streams of their own beside the weight's (3/16 of its bytes at g32), and a block's first reads of them would
// otherwise wait on memory.
template <int KIND>
inline void iq4_prefetch_rows(const void* p, int64_t row, int64_t rows, int64_t G) {
    const char* begin = static_cast<const char*>(p) + row * G * iq4_elem_bytes<KIND>();
    const int64_t bytes = rows * G * iq4_elem_bytes<KIND>();
    for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(begin + i, _MM_HINT_T0);
}

// Per row of a block: fp32 scales and zero-point coefficients -s * (zp + zbias) (an offset c: c - s * zbias),
// one per group.
template <int S_KIND, int Z_KIND>
inline void iq4_row_coefs(const void* S, const void* Z, int64_t row, int64_t G, float zbias, float* sc, float* co) {
    int64_t g = 0;
#if defined(__AVX512F__)
    const __m512 vb = _mm512_set1_ps(zbias);
    for (; g < G; g += 16) {
        const int64_t n = std::min<int64_t>(16, G - g);
        const __m512 s = iq4_load16<S_KIND>(S, row * G + g, n);
        iq4_store16(sc + g, s, n);
        if constexpr (Z_KIND == IQ_OFFSET) {
            const __m512 c = iq4_load16<IQ_F32>(Z, row * G + g, n);
            iq4_store16(co + g, _mm512_fnmadd_ps(s, vb, c), n);
        } else {
            const __m512 z = iq4_load16<Z_KIND>(Z, row * G + g, n);
            iq4_store16(co + g, _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(s, _mm512_add_ps(z, vb))), n);
        }
    }
#endif
    for (; g < G; ++g) {
        const float s = iq4_get<S_KIND>(S, row * G + g);
        sc[g] = s;
        if constexpr (Z_KIND == IQ_OFFSET) co[g] = iq4_get<IQ_F32>(Z, row * G + g) - s * zbias;
        else co[g] = -s * (iq4_get<Z_KIND>(Z, row * G + g) + zbias);
    }
}

inline float iq4_dot(const float* a, const float* b, int64_t n) {
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    if (i < n) {
        const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a + i), _mm512_maskz_loadu_ps(tail, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
#else
    float s = 0.f;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
#endif
}

#if defined(__AVX512F__)
// The vector kernels walk K in steps of 128 values: 64 bytes per weight row, loaded as one zmm. Nibble p of
// 16-bit word j (p = 0..3, low to high) is q[4j + p] (byte 2j holds k = 4j, 4j + 1; byte 2j + 1 holds 4j + 2, 4j + 3),
// so the values come out in four "planes" with shifts and masks only, no shuffles. Whatever the activation
// dtype, output lane i of a step covers k in [8i, 8i + 8): the groups of a step are runs of lanes.
// Scale vector for the lanes of one step starting at k: one group (GS >= 128), or 128 / GS of them.
template <int GS>
inline __m512 iq4_scale_vec(const float* sc, int64_t k) {
    if constexpr (GS >= IQ4_STEP) {
        return _mm512_set1_ps(sc[k / GS]);
    } else {
        constexpr int per_step = IQ4_STEP / GS;  // 2 or 4 groups
        constexpr int lanes = 16 / per_step;
        const __m512i idx = _mm512_set_epi32(15 / lanes, 14 / lanes, 13 / lanes, 12 / lanes, 11 / lanes, 10 / lanes,
                                             9 / lanes, 8 / lanes, 7 / lanes, 6 / lanes, 5 / lanes, 4 / lanes,
                                             3 / lanes, 2 / lanes, 1 / lanes, 0);
        // a plain 16-byte load (the scale rows are padded): a masked load here halved the kernel's speed at g32
        return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(sc + k / GS)));
    }
}
#endif

#if defined(__AVX512BF16__)
// --- bf16 micro-kernel: out[m][r] = sum_g s[r, g] * dot_g(X[m], 128 + q[r]) for MT rows of X, NR rows of W ---
// Plane p of a step is the bf16 numbers 128 + q[4j + p] (0x4300 | nibble); X is de-interleaved to match:
// xe[step + 32p + j] = X[step + 4j + p].
template <int MT, int NR, int GS>
inline void iq4_dot_bf16(const uint8_t* const* wr, int64_t KS, int64_t K, const uint16_t* xe, int64_t ldx,
                         const float* const* sc, float* out, int64_t ldo) {
    constexpr int64_t SPAN = GS > IQ4_STEP ? GS : IQ4_STEP;  // values between two scale applications
    const __m512i nib = _mm512_set1_epi16(0x000F);
    const __m512i bias = _mm512_set1_epi16(0x4300);  // bf16 128.0
    __m512 acc[MT][NR];
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += SPAN) {
        // one row of X: two chains of partial sums (planes 0, 1 and 2, 3) hide the dot-product latency; more rows
        // have chains enough, and a second set of accumulators would spill (measured: M = 2 1.45x slower)
        __m512 part[2][MT][NR];
        for (int c = 0; c < 2; ++c)
            for (int m = 0; m < MT; ++m)
                for (int r = 0; r < NR; ++r) part[c][m][r] = _mm512_setzero_ps();
        for (int64_t k = k0; k < k0 + SPAN; k += IQ4_STEP) {
            const int64_t off = (k / IQ4_STEP) * KS;
            for (int r = 0; r < NR; ++r) {
                _mm_prefetch(reinterpret_cast<const char*>(wr[r] + off + IQ4_PREFETCH_STEPS * KS), _MM_HINT_T0);
                const __m512i w = _mm512_loadu_si512(wr[r] + off);
                const __m512bh plane[4] = {
                    (__m512bh)_mm512_ternarylogic_epi32(w, nib, bias, 0xEA),  // (w & nib) | bias
                    (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 4), nib, bias, 0xEA),
                    (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 8), nib, bias, 0xEA),
                    (__m512bh)_mm512_or_si512(_mm512_srli_epi16(w, 12), bias),
                };
                for (int p = 0; p < 4; ++p) {
                    const int c = MT == 1 ? p / 2 : 0;
                    for (int m = 0; m < MT; ++m)
                        part[c][m][r] = _mm512_dpbf16_ps(
                            part[c][m][r], plane[p], (__m512bh)_mm512_loadu_si512(xe + m * ldx + k + 32 * p));
                }
            }
        }
        for (int r = 0; r < NR; ++r) {
            const __m512 s = iq4_scale_vec<GS>(sc[r], k0);
            for (int m = 0; m < MT; ++m)
                acc[m][r] = _mm512_fmadd_ps(_mm512_add_ps(part[0][m][r], part[1][m][r]), s, acc[m][r]);
        }
    }
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < NR; ++r) out[m * ldo + r] = _mm512_reduce_add_ps(acc[m][r]);
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// --- int8 micro-kernel: out[m][r] = sum_g s[r, g] * dot_g(X[m], q[r]) for MT rows of int8 X, NR rows of W ---
// On 8-bit lanes a step has two planes: byte b of the low plane is q[2b], of the high plane q[2b + 1] (mask, and
// shift + mask). X is de-interleaved to match: xe[step + 64p + b] = X[step + 2b + p]. A 32-bit lane i of either
// plane covers k in [8i, 8i + 8), as in the other kernels, so the scale vectors are the same. Per-lane sums of
// 4 products of at most 15 * 128 cannot overflow int32 within a span.
template <int MT, int NR, int GS>
inline void iq4_dot_i8(const uint8_t* const* wr, int64_t KS, int64_t K, const int8_t* xe, int64_t ldx,
                       const float* const* sc, float* out, int64_t ldo) {
    constexpr int64_t SPAN = GS > IQ4_STEP ? GS : IQ4_STEP;
    const __m512i nib = _mm512_set1_epi8(0x0F);
    __m512 acc[MT][NR];
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += SPAN) {
        __m512i part[MT][NR];
        for (int m = 0; m < MT; ++m)
            for (int r = 0; r < NR; ++r) part[m][r] = _mm512_setzero_si512();
        for (int64_t k = k0; k < k0 + SPAN; k += IQ4_STEP) {
            const int64_t off = (k / IQ4_STEP) * KS;
            for (int r = 0; r < NR; ++r) {
                _mm_prefetch(reinterpret_cast<const char*>(wr[r] + off + IQ4_PREFETCH_STEPS * KS), _MM_HINT_T0);
                const __m512i w = _mm512_loadu_si512(wr[r] + off);
                const __m512i lo = _mm512_and_si512(w, nib);
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nib);
                for (int m = 0; m < MT; ++m) {
                    part[m][r] = _mm512_dpbusd_epi32(part[m][r], lo, _mm512_loadu_si512(xe + m * ldx + k));
                    part[m][r] = _mm512_dpbusd_epi32(part[m][r], hi, _mm512_loadu_si512(xe + m * ldx + k + 64));
                }
            }
        }
        for (int r = 0; r < NR; ++r) {
            const __m512 s = iq4_scale_vec<GS>(sc[r], k0);
            for (int m = 0; m < MT; ++m) acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(part[m][r]), s, acc[m][r]);
        }
    }
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < NR; ++r) out[m * ldo + r] = _mm512_reduce_add_ps(acc[m][r]);
}
#endif

#if defined(__AVX512F__)
// --- fp32 micro-kernel: out[m][r] = sum_g s[r, g] * dot_g(X[m], q[r]) for MT rows of fp32 X, NR rows of W ---
// On 32-bit lanes a step has eight planes: plane p is q[8i + p] (nibble p of dword i); xe[step + 16p + i] =
// X[step + 8i + p].
template <int MT, int NR, int GS>
inline void iq4_dot_f32(const uint8_t* const* wr, int64_t KS, int64_t K, const float* xe, int64_t ldx,
                        const float* const* sc, float* out, int64_t ldo) {
    constexpr int64_t SPAN = GS > IQ4_STEP ? GS : IQ4_STEP;
    const __m512i nib = _mm512_set1_epi32(0xF);
    __m512 acc[MT][NR];
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += SPAN) {
        __m512 part[2][MT][NR];
        for (int c = 0; c < 2; ++c)
            for (int m = 0; m < MT; ++m)
                for (int r = 0; r < NR; ++r) part[c][m][r] = _mm512_setzero_ps();
        for (int64_t k = k0; k < k0 + SPAN; k += IQ4_STEP) {
            const int64_t off = (k / IQ4_STEP) * KS;
            for (int r = 0; r < NR; ++r) {
                _mm_prefetch(reinterpret_cast<const char*>(wr[r] + off + IQ4_PREFETCH_STEPS * KS), _MM_HINT_T0);
                const __m512i w = _mm512_loadu_si512(wr[r] + off);
                for (int p = 0; p < 8; ++p) {
                    const __m512 plane = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(w, 4 * p), nib));
                    for (int m = 0; m < MT; ++m)
                        part[p % 2][m][r] = _mm512_fmadd_ps(plane, _mm512_loadu_ps(xe + m * ldx + k + 16 * p), part[p % 2][m][r]);
                }
            }
        }
        for (int r = 0; r < NR; ++r) {
            const __m512 s = iq4_scale_vec<GS>(sc[r], k0);
            for (int m = 0; m < MT; ++m)
                acc[m][r] = _mm512_fmadd_ps(_mm512_add_ps(part[0][m][r], part[1][m][r]), s, acc[m][r]);
        }
    }
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < NR; ++r) out[m * ldo + r] = _mm512_reduce_add_ps(acc[m][r]);
}

// MT rows of X against the 4 rows of a block: two passes of 2 rows when MT > 2 (the accumulators fit registers)
template <int MT, int GS, typename XT>
inline void iq4_block(const uint8_t* const* wr, int64_t KS, int64_t K, const XT* xe, int64_t ldx,
                      const float* const* sc, float* out) {
    constexpr int NR = MT > 2 ? 2 : IQ4_NR;
    for (int r0 = 0; r0 < IQ4_NR; r0 += NR) {
#if defined(__AVX512BF16__)
        if constexpr (sizeof(XT) == 2) {
            iq4_dot_bf16<MT, NR, GS>(wr + r0, KS, K, reinterpret_cast<const uint16_t*>(xe), ldx, sc + r0, out + r0, IQ4_NR);
            continue;
        }
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
        if constexpr (sizeof(XT) == 1) {
            iq4_dot_i8<MT, NR, GS>(wr + r0, KS, K, reinterpret_cast<const int8_t*>(xe), ldx, sc + r0, out + r0, IQ4_NR);
            continue;
        }
#endif
        if constexpr (sizeof(XT) == 4)
            iq4_dot_f32<MT, NR, GS>(wr + r0, KS, K, reinterpret_cast<const float*>(xe), ldx, sc + r0, out + r0, IQ4_NR);
    }
}
#endif

// --- portable fallback (no AVX512): the same sums from fp32 X in natural k order, scalar ---
inline void iq4_dot_scalar(const uint8_t* const* wr, int64_t KS, int64_t K, int64_t GS, const float* x, int64_t ldx,
                           int64_t mt, const float* const* sc, float* out) {
    for (int64_t m = 0; m < mt; ++m)
        for (int r = 0; r < IQ4_NR; ++r) {
            float total = 0.f;
            for (int64_t k0 = 0; k0 < K; k0 += GS) {
                float part = 0.f;
                for (int64_t k = k0; k < k0 + GS; k += 2) {
                    const uint8_t b = wr[r][(k / IQ4_STEP) * KS + (k % IQ4_STEP) / 2];
                    part += x[m * ldx + k] * (b & 0xF) + x[m * ldx + k + 1] * (b >> 4);
                }
                total += part * sc[r][k0 / GS];
            }
            out[m * IQ4_NR + r] = total;
        }
}
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
// --- AMX (bf16 X, M <= 32): the weight is the A operand, X the B operand ---
// A step takes 32 values (16 bytes) of 32 weight rows, their nibbles as the bf16 numbers 128 + q (one OR, as the
// AVX512 path) in the order [low nibbles, high nibbles] = k + 0, 2, .., 30, k + 1, 3, .., 31; X is laid out as B
// tiles in that order (row p: the pairs of positions 2p, 2p + 1 of 16 activation rows). The tiles sum each group
// exactly as bf16 products in fp32; at a group's end the sums times the group's scale go into fp32 accumulators.
// (tiles: amx_tiles.h, iq_amx::decode_step)
constexpr int64_t IQ4_AMX_ROWS = 32;
constexpr int64_t IQ4_AMX_CHUNK = 32;  // K values per tile step

// position i (0 .. 32) of a chunk's A row holds k offset iq4_amx_k(i)
inline int64_t iq4_amx_k(int64_t i) { return i < 16 ? 2 * i : 2 * (i - 16) + 1; }

// xp[(c * 16 + p) * 16 * MT + m] = bf16 bits of X[m, k(2p)], X[m, k(2p + 1)] for chunk c (zero past K and M)
template <int MT>
inline void iq4_amx_pack_x(const uint16_t* x, int64_t M, int64_t K, int64_t KP, uint32_t* xp) {
    for (int64_t c = 0; c < KP / IQ4_AMX_CHUNK; ++c)
        for (int64_t p = 0; p < 16; ++p)
            for (int64_t m = 0; m < 16 * MT; ++m) {
                const int64_t k0 = c * IQ4_AMX_CHUNK + iq4_amx_k(2 * p), k1 = c * IQ4_AMX_CHUNK + iq4_amx_k(2 * p + 1);
                const uint32_t lo = m < M && k0 < K ? x[m * K + k0] : 0, hi = m < M && k1 < K ? x[m * K + k1] : 0;
                xp[(c * 16 + p) * 16 * MT + m] = lo | (hi << 16);
            }
}

// acc[r * 16 * MT + m] = sum_g sc[r][g] * sum_{k in g} (128 + q[r, k]) X[m, k] for the 32 rows at wr[r]
// (step t of a row at wr[r] + t * KS, 64 bytes = 128 values)
template <int MT>
inline void iq4_amx_block(const uint8_t* const* wr, int64_t KS, int64_t KP, int64_t GS, const uint32_t* xp,
                          const float* const* sc, float* acc) {
    alignas(64) uint16_t a[IQ4_AMX_ROWS * IQ4_AMX_CHUNK];
    alignas(64) float part[IQ4_AMX_ROWS * 16 * MT];
    for (int64_t i = 0; i < IQ4_AMX_ROWS * 16 * MT; ++i) acc[i] = 0.f;
    const __m256i nib = _mm256_set1_epi16(0xF);
    const __m512i bias = _mm512_set1_epi16(0x4300);
    iq_amx::zero_sums<MT>();
    for (int64_t k = 0; k < KP; k += IQ4_AMX_CHUNK) {
        const int64_t off = k / IQ4_STEP * KS + (k % IQ4_STEP) / 2;
        for (int r = 0; r < IQ4_AMX_ROWS; ++r) {
            if (k % IQ4_STEP == 0) _mm_prefetch(reinterpret_cast<const char*>(wr[r] + off + IQ4_PREFETCH_STEPS * KS), _MM_HINT_T0);
            const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr[r] + off)));
            const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b, nib)), _mm256_srli_epi16(b, 4), 1);
            _mm512_store_si512(a + r * IQ4_AMX_CHUNK, _mm512_or_si512(v, bias));
        }
        iq_amx::decode_step<MT>(a, xp + (k / IQ4_AMX_CHUNK) * 16 * 16 * MT);
        if ((k + IQ4_AMX_CHUNK) % GS == 0) {  // the group ends: its sums times its scale, into acc
            const int64_t g = k / GS;
            iq_amx::store_sums<MT>(part);
            iq_amx::zero_sums<MT>();
            for (int r = 0; r < IQ4_AMX_ROWS; ++r) {
                const __m512 s = _mm512_set1_ps(sc[r][g]);
                for (int j = 0; j < MT; ++j) {
                    float* o = acc + r * 16 * MT + 16 * j;
                    _mm512_store_ps(o, _mm512_fmadd_ps(s, _mm512_load_ps(part + r * 16 * MT + 16 * j), _mm512_load_ps(o)));
                }
            }
        }
    }
}
#endif
}  // namespace
#endif  // INDUCTOR_QUANT_INT4_GEMV_HELPERS

extern "C" {{export_declaration}}
{%- if x_scaled %}
{{kernel.def_kernel(inputs={"X": X, "XS": XS, "W": W, "S": S, "Z": Z, "B": B}, outputs={"Y": Y}, aliases=None)}}
{%- else %}
{{kernel.def_kernel(inputs={"X": X, "W": W, "S": S, "Z": Z, "B": B}, outputs={"Y": Y}, aliases=None)}}
{%- endif %}
{
    // inductor_quant int4_gemv: M={{M}} N={{N}} K={{K}} group={{GS}} weight={{ "packed" if packed else "row-major" }} bias={{ B is not none }}{{ " activations=int8" if x_scaled else "" }}
    constexpr int64_t M = {{M}};
    constexpr int64_t N = {{N}};
    constexpr int64_t K = {{K}};               // X's row: a multiple of GS
    constexpr int64_t KP = {{KP}};             // W's row: K zero-padded to a multiple of IQ4_STEP (packed weights)
    constexpr int64_t GS = {{GS}};             // group size: 32, 64, 128 or 256
    constexpr int64_t G = KP / GS;             // groups of S / Z rows (past K: padding, read against zeros)
    constexpr int64_t RS = {{row_stride}};     // see the layout note above
    constexpr int64_t KS = {{step_stride}};
    constexpr int S_KIND = {{s_kind}};
    constexpr int Z_KIND = {{z_kind}};
    constexpr int64_t n_blocks = (N + IQ4_NR - 1) / IQ4_NR;
{%- if x_is_bf16 %}
#if defined(__AVX512BF16__)
#define IQ4_PATH_BF16 1
#endif
{%- elif x_scaled %}
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define IQ4_PATH_I8 1
#endif
{%- endif %}
#if defined(IQ4_PATH_BF16)
    constexpr float zbias = 128.f;   // the unpacked nibbles are 128 + q
    using xe_t = uint16_t;
#elif defined(IQ4_PATH_I8)
    constexpr float zbias = 0.f;
    using xe_t = int8_t;
#elif defined(__AVX512F__)
#define IQ4_PATH_F32 1
    constexpr float zbias = 0.f;
    using xe_t = float;
#else
    constexpr float zbias = 0.f;
    using xe_t = float;
#endif
    // --- once per call: X in the kernels' plane order (see iq4_dot_bf16 / iq4_dot_f32), and its per-group sums;
    // past K (a padded weight) xe and the sums are zero, so the padding adds nothing ---
    std::unique_ptr<xe_t[]> xe_owner(new xe_t[M * KP]());
    std::unique_ptr<float[]> xsum_owner(new float[M * G]);
    xe_t* xe = xe_owner.get();
    float* xsum = xsum_owner.get();
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t g = 0; g < G; ++g) {
            float s = 0.f;
            for (int64_t k = g * GS; k < std::min<int64_t>((g + 1) * GS, K); ++k) s += static_cast<float>(X[m * K + k]);
            xsum[m * G + g] = s;
        }
        for (int64_t k = 0; k < K; ++k) {
            const int64_t step = k - k % IQ4_STEP, o = k % IQ4_STEP;
#if defined(IQ4_PATH_BF16)
            uint16_t bits;
            std::memcpy(&bits, &X[m * K + k], 2);
            xe[m * KP + step + 32 * (o % 4) + o / 4] = bits;
#elif defined(IQ4_PATH_I8)
            xe[m * KP + step + 64 * (o % 2) + o / 2] = X[m * K + k];
#elif defined(IQ4_PATH_F32)
            xe[m * KP + step + 16 * (o % 8) + o / 8] = static_cast<float>(X[m * K + k]);
#else
            xe[m * KP + k] = static_cast<float>(X[m * K + k]);
#endif
        }
    }

{%- if amx %}
#if defined(IQ4_PATH_BF16) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define IQ4_PATH_AMX 1
    // AMX tiles (the CPU has them; INDUCTOR_QUANT_CPU_ISA=avx512 renders only the AVX512 kernel below, which also
    // runs if the OS refuses this process the tile state)
    if (iq_amx::permitted()) {
        constexpr int MT = M > 16 ? 2 : 1;
        std::unique_ptr<uint32_t[]> xp_owner(new uint32_t[(KP / 2) * 16 * MT]);
        iq4_amx_pack_x<MT>(reinterpret_cast<const uint16_t*>(X), M, K, KP, xp_owner.get());
        const uint32_t* xp = xp_owner.get();
        constexpr int64_t n_blocks32 = (N + IQ4_AMX_ROWS - 1) / IQ4_AMX_ROWS;
        #pragma omp parallel num_threads({{num_threads}})
        {
            iq_amx::configure();
            std::unique_ptr<float[]> coefs(new float[IQ4_AMX_ROWS * (2 * G + 4)]);
            #pragma omp for schedule(static)
            for (int64_t nb = 0; nb < n_blocks32; ++nb) {
                const int64_t n0 = nb * IQ4_AMX_ROWS;
                const int64_t rows = std::min<int64_t>(IQ4_AMX_ROWS, N - n0);
                // rows past N (the last block of a weight) re-read row N - 1; their sums are dropped
                const uint8_t* wr[IQ4_AMX_ROWS];
                const float* sc[IQ4_AMX_ROWS];
                const float* co[IQ4_AMX_ROWS];
                for (int64_t r = 0; r < IQ4_AMX_ROWS; ++r) {
                    const int64_t n = std::min<int64_t>(n0 + r, N - 1);
                    wr[r] = W + n / IQ4_NR * IQ4_NR * (KP / 2) + n % IQ4_NR * RS;
                    float* rc = coefs.get() + r * (2 * G + 4);
                    iq4_row_coefs<S_KIND, Z_KIND>(S, Z, n, G, zbias, rc, rc + G + 4);
                    sc[r] = rc;
                    co[r] = rc + G + 4;
                }
                alignas(64) float acc[IQ4_AMX_ROWS * 16 * MT];
                iq4_amx_block<MT>(wr, KS, KP, GS, xp, sc, acc);
                for (int64_t mm = 0; mm < M; ++mm)
                    for (int64_t r = 0; r < rows; ++r) {
                        const float out = {{ epilogue("(acc[r * 16 * MT + mm] + iq4_dot(co[r], xsum + mm * G, G))", none, "B[n0 + r]" if B is not none else none) }};
                        Y[mm * N + n0 + r] = static_cast<{{kernel.dtype(Y)}}>(out);
                    }
            }
            _tile_release();
        }
    } else
#endif
    {
{%- endif %}
    #pragma omp parallel for num_threads({{num_threads}}) schedule(static)
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
        const int64_t n0 = nb * IQ4_NR;
        const int64_t rows = std::min<int64_t>(IQ4_NR, N - n0);
        // rows past N (last block of a plain weight) re-read the last row; their sums are dropped
        if (nb + IQ4_COEF_AHEAD < n_blocks) {
            const int64_t ahead = n0 + IQ4_COEF_AHEAD * IQ4_NR;
            iq4_prefetch_rows<S_KIND>(S, ahead, std::min<int64_t>(IQ4_NR, N - ahead), G);
            iq4_prefetch_rows<Z_KIND>(Z, ahead, std::min<int64_t>(IQ4_NR, N - ahead), G);
        }
        const uint8_t* wr[IQ4_NR];
        float sc_rows[IQ4_NR][G + 4], co_rows[IQ4_NR][G];  // + 4: iq4_scale_vec reads 4 scales
        const float* sc[IQ4_NR];
        for (int64_t r = 0; r < IQ4_NR; ++r) {
            const int64_t row = n0 + std::min<int64_t>(r, rows - 1);
            wr[r] = W + n0 * (KP / 2) + std::min<int64_t>(r, rows - 1) * RS;
            iq4_row_coefs<S_KIND, Z_KIND>(S, Z, row, G, zbias, sc_rows[r], co_rows[r]);
            sc[r] = sc_rows[r];
        }
        alignas(64) float acc[M * IQ4_NR];
#if defined(IQ4_PATH_BF16) || defined(IQ4_PATH_I8) || defined(IQ4_PATH_F32)
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) iq4_block<4, GS>(wr, KS, KP, xe + m * KP, KP, sc, acc + m * IQ4_NR);
        switch (M - m) {
            case 3: iq4_block<3, GS>(wr, KS, KP, xe + m * KP, KP, sc, acc + m * IQ4_NR); break;
            case 2: iq4_block<2, GS>(wr, KS, KP, xe + m * KP, KP, sc, acc + m * IQ4_NR); break;
            case 1: iq4_block<1, GS>(wr, KS, KP, xe + m * KP, KP, sc, acc + m * IQ4_NR); break;
            default: break;
        }
#else
        iq4_dot_scalar(wr, KS, KP, GS, xe, KP, M, sc, acc);
#endif
        // --- epilogue: + zero-point term ({{ "* XS[m], " if x_scaled else "" }}+ bias) in fp32, one rounding to Y's dtype ---
        for (int64_t mm = 0; mm < M; ++mm)
            for (int64_t r = 0; r < rows; ++r) {
                const float out = {{ epilogue("(acc[mm * IQ4_NR + r] + iq4_dot(co_rows[r], xsum + mm * G, G))", "XS[mm]" if x_scaled else none, "B[n0 + r]" if B is not none else none) }};
                Y[mm * N + n0 + r] = static_cast<{{kernel.dtype(Y)}}>(out);
            }
    }
{%- if amx %}
    }
#undef IQ4_PATH_AMX
{%- endif %}
{%- if epilogue_nodes %}
    // --- fused epilogue nodes (activation, residual, ...) over the whole output ---
    {{ store_epilogue() }}
{%- endif %}
#undef IQ4_PATH_BF16
#undef IQ4_PATH_I8
#undef IQ4_PATH_F32
}

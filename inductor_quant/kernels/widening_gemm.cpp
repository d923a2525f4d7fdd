// Prefill GEMM for weight-only quantized linears, the weight widened inside it (never as a whole):
//   int8: Y[m, n] = (sum_k X[m, k] * q[n, k]) * s[n] (+ b[n]),  q int8 [N, K], s fp32 [N];
//   int4: Y[m, n] = sum_k X[m, k] * W[n, k] (+ b[n]),  W[n, k] = (q[n, k] - zp[n, g]) * s[n, g], g = k / GS,
//         q two nibbles per byte [N, K / 2] (k = 2j low, 2j + 1 high), s / zp fp32 [N, K / GS];
//   int8 blockwise: the same with W[n, k] = q[n, k] * s[n, g], q int8 [N, K], s fp32 [N, K / GS].
// b fp32 [N]. The int4 and blockwise W are computed in fp32 and rounded once to the activations' dtype, exactly as
// the eager dequantizes do; int8 values are exact in every dtype and its scale is applied once per output. Sums in
// fp32, one rounding to Y's dtype (fp32 / bf16 / fp16).
//
// Threads take panels of NP = 64 output columns; each KC-deep slice of a panel is converted once into the compute
// layout and the micro-kernel runs every row block of X against it: MR = 6 rows x 4 vectors of 16 columns = 24 fp32
// accumulators, each step one broadcast element of X per row and 4 vectors of the packed weight. Two computes:
//   * bf16 X: `vdpbf16ps` on bf16 pairs (32-bit lane c of pair p holds W[n0 + c, 2p] and W[n0 + c, 2p + 1]);
//   * fp32 X (and fp16 X, widened to fp32 by the caller, W rounded through fp16): fp32 FMAs on fp32 columns.
// Converting costs a few percent of the arithmetic at M = 256. Each entry point returns 1 when it computed Y, 0 when
// this build has no AVX512-BF16 or the shape is not served (K or the group not a multiple of 32): the caller then
// uses its fallback.
#include <immintrin.h>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "amx_tiles.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
namespace {
constexpr int64_t NP = 64;  // output columns per panel
constexpr int64_t MR = 6;   // rows of X per micro-kernel call
// A packed slice is 128 KiB (it stays in L2; 6 rows of X's slice, 12 KiB, in L1): 1024 k of bf16 pairs, 512 of fp32.
constexpr int64_t SLICE_BYTES = 128 << 10;

// F32_VIA_F16: fp16 X given as fp32, W rounded to fp16; BF16_AMX: BF16's numbers on AMX tiles
enum Compute { BF16 = 0, F32 = 1, F32_VIA_F16 = 2, BF16_AMX = 3 };

template <int C>
constexpr int64_t slice_depth() {
    return SLICE_BYTES / (NP * 4) * (C == BF16 || C == BF16_AMX ? 2 : 1);
}

// r[i] holds 16 dwords of row i; afterwards r[j] holds dword j of every row (a 16 x 16 transpose)
inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

// two fp32 vectors (k even, k odd) -> bf16 pairs, rounded to nearest even
inline __m512i round_pairs(__m512 lo, __m512 hi) {
    const __m512i lo16 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    const __m512i hi16 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    return _mm512_or_si512(lo16, _mm512_slli_epi32(hi16, 16));
}

// coefficient g of the 16 rows n0 .. n0 + 15 of a [N, G] fp32 tensor (rows past N: 0)
inline __m512 group_column(const float* t, int64_t n0, int64_t N, int64_t G, int64_t g) {
    const int64_t rows = std::min<int64_t>(16, N - n0);
    const __mmask16 live = static_cast<__mmask16>(rows >= 16 ? 0xFFFF : rows > 0 ? (1u << rows) - 1 : 0);
    const __m512i at = _mm512_add_epi32(
        _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                           _mm512_set1_epi32(static_cast<int>(G))),
        _mm512_set1_epi32(static_cast<int>(g)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, at, t + std::min(n0, N) * G, 4);
}

// Weight sources: run(n, k, v) sets v[i] = W[n .. n + 16, k + i] in fp32 for i < 32 (one 32-deep run of 16 rows,
// all in one group / block; rows past N are zero).
struct Int8Weight {
    const int8_t* q;
    int64_t K, N;
    bool blocked;  // q in the blocked decode layout [N / 4][K / 32][4][32] (primitives.pack_int8_blocked)

    // the 32 values q[row, k .. k + 32)
    const int8_t* at(int64_t row, int64_t k) const {
        return blocked ? q + ((row / 4) * (K / 32) + k / 32) * 128 + (row % 4) * 32 : q + row * K + k;
    }

    void run(int64_t n, int64_t k, __m512 v[32]) const {
        __m512i r[16];
        for (int i = 0; i < 16; ++i)
            r[i] = n + i < N ? _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at(n + i, k))))
                             : _mm512_setzero_si512();
        transpose16(r);  // r[j]: k + 2j and k + 2j + 1 of the 16 rows, as two int16
        for (int j = 0; j < 16; ++j) {
            v[2 * j] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(r[j], 16), 16));
            v[2 * j + 1] = _mm512_cvtepi32_ps(_mm512_srai_epi32(r[j], 16));
        }
    }
};

struct Int4Weight {
    const uint8_t* q;
    const float* s;
    const float* zp;
    int64_t K, N, GS;
    bool blocked;  // q in the blocked decode layout [N / 4][K / 128][4][64 bytes] (primitives.pack_int4_blocked)

    // the 16 bytes (32 values) of row `row` from value k on (k a multiple of 32)
    const uint8_t* at(int64_t row, int64_t k) const {
        return blocked ? q + ((row / 4) * (K / 128) + k / 128) * 256 + (row % 4) * 64 + (k % 128) / 2
                       : q + row * (K / 2) + k / 2;
    }

    void run(int64_t n, int64_t k, __m512 v[32]) const {
        const __m512 vs = group_column(s, n, N, K / GS, k / GS), vz = group_column(zp, n, N, K / GS, k / GS);
        const __m512i nib = _mm512_set1_epi32(0xF);
        __m512i r[16];
        for (int i = 0; i < 16; ++i)
            r[i] = n + i < N ? _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at(n + i, k))))
                             : _mm512_setzero_si512();
        transpose16(r);  // r[j]: byte k / 2 + j (k + 2j low nibble, k + 2j + 1 high) of the 16 rows
        for (int j = 0; j < 16; ++j) {
            v[2 * j] = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(r[j], nib)), vz), vs);
            v[2 * j + 1] = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(r[j], 4)), vz), vs);
        }
    }
};

struct Int8BlockWeight {
    Int8Weight values;
    const float* s;
    int64_t GS;

    void run(int64_t n, int64_t k, __m512 v[32]) const {
        const __m512 vs = group_column(s, n, values.N, values.K / GS, k / GS);
        values.run(n, k, v);
        for (int i = 0; i < 32; ++i) v[i] = _mm512_mul_ps(v[i], vs);
    }
};

// Convert W[n0 .. n0 + 64, k0 .. k0 + kc) (kc a multiple of 32) into the compute layout: bf16 pairs at
// bp[(k / 2) * NP + c] (rounded to nearest even), or fp32 at bp[k * NP + c]
template <int C, typename Weight>
void pack_slice(const Weight& w, int64_t n0, int64_t k0, int64_t kc, uint32_t* bp) {
    __m512 v[32];
    for (int64_t cb = 0; cb < NP; cb += 16)
        for (int64_t k = 0; k < kc; k += 32) {
            w.run(n0 + cb, k0 + k, v);
            if constexpr (C == BF16) {
                for (int j = 0; j < 16; ++j) _mm512_store_si512(bp + (k / 2 + j) * NP + cb, round_pairs(v[2 * j], v[2 * j + 1]));
            } else {
                for (int i = 0; i < 32; ++i) {
                    __m512 f = v[i];
                    if constexpr (C == F32_VIA_F16) f = _mm512_cvtph_ps(_mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                    _mm512_store_ps(reinterpret_cast<float*>(bp) + (k + i) * NP + cb, f);
                }
            }
        }
}

// c[m][0..64) (+)= X[m, slice] . packed columns, for R rows of X: bf16 pairs (np = depth / 2 steps) or fp32
template <int C, int R>
inline void micro_kernel(const void* xv, int64_t ldx, const uint32_t* bp, int64_t depth, float* c, bool first) {
    __m512 acc[R][4];
    for (int m = 0; m < R; ++m)
        for (int j = 0; j < 4; ++j) acc[m][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(c + m * NP + 16 * j);
    if constexpr (C == BF16) {
        const uint16_t* x = static_cast<const uint16_t*>(xv);
        for (int64_t p = 0; p < depth / 2; ++p) {
            const uint32_t* b = bp + p * NP;
            const __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
            const __m512bh b2 = (__m512bh)_mm512_load_si512(b + 32), b3 = (__m512bh)_mm512_load_si512(b + 48);
            for (int m = 0; m < R; ++m) {
                int32_t pair;
                std::memcpy(&pair, x + m * ldx + 2 * p, 4);
                const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
                acc[m][0] = _mm512_dpbf16_ps(acc[m][0], a, b0);
                acc[m][1] = _mm512_dpbf16_ps(acc[m][1], a, b1);
                acc[m][2] = _mm512_dpbf16_ps(acc[m][2], a, b2);
                acc[m][3] = _mm512_dpbf16_ps(acc[m][3], a, b3);
            }
        }
    } else {
        const float* x = static_cast<const float*>(xv);
        const float* bf = reinterpret_cast<const float*>(bp);
        for (int64_t k = 0; k < depth; ++k) {
            const float* b = bf + k * NP;
            const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
            const __m512 b2 = _mm512_load_ps(b + 32), b3 = _mm512_load_ps(b + 48);
            for (int m = 0; m < R; ++m) {
                const __m512 a = _mm512_set1_ps(x[m * ldx + k]);
                acc[m][0] = _mm512_fmadd_ps(a, b0, acc[m][0]);
                acc[m][1] = _mm512_fmadd_ps(a, b1, acc[m][1]);
                acc[m][2] = _mm512_fmadd_ps(a, b2, acc[m][2]);
                acc[m][3] = _mm512_fmadd_ps(a, b3, acc[m][3]);
            }
        }
    }
    for (int m = 0; m < R; ++m)
        for (int j = 0; j < 4; ++j) _mm512_store_ps(c + m * NP + 16 * j, acc[m][j]);
}

template <int C>
void row_block(int64_t rows, const void* x, int64_t ldx, const uint32_t* bp, int64_t depth, float* c, bool first) {
    switch (rows) {
        case 6: micro_kernel<C, 6>(x, ldx, bp, depth, c, first); break;
        case 5: micro_kernel<C, 5>(x, ldx, bp, depth, c, first); break;
        case 4: micro_kernel<C, 4>(x, ldx, bp, depth, c, first); break;
        case 3: micro_kernel<C, 3>(x, ldx, bp, depth, c, first); break;
        case 2: micro_kernel<C, 2>(x, ldx, bp, depth, c, first); break;
        default: micro_kernel<C, 1>(x, ldx, bp, depth, c, first); break;
    }
}

// Y[m, n0 + c] = c[m][c] (* s) (+ b) for c < cols, rounded once to Y's dtype (0 fp32, 1 bf16, 2 fp16)
void store_panel(const float* c, int64_t M, int64_t N, int64_t n0, int64_t cols, const float* s, const float* b,
                 void* y, int64_t out_kind) {
    for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 mask = static_cast<__mmask16>(cols - j >= 16 ? 0xFFFF : (1u << (cols - j)) - 1);
        const __m512 vs = s ? _mm512_maskz_loadu_ps(mask, s + n0 + j) : _mm512_set1_ps(1.f);
        const __m512 vb = b ? _mm512_maskz_loadu_ps(mask, b + n0 + j) : _mm512_setzero_ps();
        for (int64_t m = 0; m < M; ++m) {
            const __m512 v = _mm512_fmadd_ps(_mm512_load_ps(c + m * NP + j), vs, vb);
            const int64_t at = m * N + n0 + j;
            if (out_kind == 0) {
                _mm512_mask_storeu_ps(static_cast<float*>(y) + at, mask, v);
            } else if (out_kind == 1) {
                _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y) + at, mask, (__m256i)_mm512_cvtneps_pbh(v));
            } else {
                _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y) + at, mask,
                                         _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
        }
    }
}

// The threads' walk: each takes panels of NP output columns; each KC-deep slice of a panel is converted once into
// the compute layout C (at bp) and `rows(m, k0, bp, kc, cm, first)` runs the RB rows of X from row m against it,
// into cm, the panel's fp32 sums of those rows (first: the slice at k0 = 0); the panel's sums are then stored to Y.
// `setup` / `teardown` run once per thread.
template <int C, int64_t RB, typename Weight, typename Rows, typename Setup, typename Teardown>
void walk_panels(const Weight& w, const void* x, const float* s, const float* b, void* y, int64_t M, int64_t N,
                 int64_t K, int64_t out_kind, int64_t num_threads, Rows&& rows, Setup&& setup, Teardown&& teardown) {
    constexpr int64_t KC = slice_depth<C>();
    const int64_t panels = (N + NP - 1) / NP;
    const int64_t row_blocks = (M + RB - 1) / RB;
#pragma omp parallel num_threads(num_threads)
    {
        setup();
        uint32_t* bp = static_cast<uint32_t*>(std::aligned_alloc(64, SLICE_BYTES));
        float* c = static_cast<float*>(std::aligned_alloc(64, row_blocks * RB * NP * sizeof(float)));
#pragma omp for schedule(static)
        for (int64_t pn = 0; pn < panels; ++pn) {
            const int64_t n0 = pn * NP;
            for (int64_t k0 = 0; k0 < K; k0 += KC) {
                const int64_t kc = std::min(KC, K - k0);
                pack_slice<C>(w, n0, k0, kc, bp);
                for (int64_t m = 0; m < M; m += RB) rows(m, k0, bp, kc, c + m * NP, k0 == 0);
            }
            store_panel(c, M, N, n0, std::min(NP, N - n0), s, b, y, out_kind);
        }
        std::free(bp);
        std::free(c);
        teardown();
    }
}

template <int C, typename Weight>
void widening_gemm_as(const Weight& w, const void* x, const float* s, const float* b, void* y, int64_t M, int64_t N,
                      int64_t K, int64_t out_kind, int64_t num_threads) {
    walk_panels<C, MR>(
        w, x, s, b, y, M, N, K, out_kind, num_threads,
        [&](int64_t m, int64_t k0, const uint32_t* bp, int64_t kc, float* cm, bool first) {
            const void* xm = static_cast<const char*>(x) + (m * K + k0) * (C == BF16 ? 2 : 4);
            row_block<C>(std::min(MR, M - m), xm, K, bp, kc, cm, first);
        },
        [] {}, [] {});
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define INDUCTOR_QUANT_AMX 1
// AMX: 32 rows of X at a time (two 16-row tiles) against 32 packed columns (two tiles of 16 columns x 16 bf16
// pairs, the layout pack_slice<BF16> already writes: 64-byte rows of a tile = 16 columns of one pair), four 16 x 16
// fp32 accumulator tiles. Tiles 0-3 accumulate, 4-5 hold X, 6-7 the weight.
constexpr int64_t AMX_MR = 32;

// c[0 .. 32)[0 .. 64) (+)= X[32 rows, slice] . packed columns; X's rows ldx bf16 apart
inline void amx_block(const uint16_t* x, int64_t ldx, const uint32_t* bp, int64_t depth, float* c, bool first) {
    constexpr int64_t c_stride = NP * 4, b_stride = NP * 4;
    const int64_t x_stride = ldx * 2;
    for (int64_t cb = 0; cb < NP; cb += 32) {
        float* c0 = c + cb;
        float* c1 = c + 16 * NP + cb;
        if (first) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
        } else {
            _tile_loadd(0, c0, c_stride);
            _tile_loadd(1, c0 + 16, c_stride);
            _tile_loadd(2, c1, c_stride);
            _tile_loadd(3, c1 + 16, c_stride);
        }
        for (int64_t k = 0; k < depth; k += 32) {
            const uint32_t* b = bp + (k / 2) * NP + cb;
            _tile_loadd(4, x + k, x_stride);
            _tile_loadd(5, x + 16 * ldx + k, x_stride);
            _tile_loadd(6, b, b_stride);
            _tile_loadd(7, b + 16, b_stride);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, c0, c_stride);
        _tile_stored(1, c0 + 16, c_stride);
        _tile_stored(2, c1, c_stride);
        _tile_stored(3, c1 + 16, c_stride);
    }
}

template <typename Weight>
void widening_gemm_amx(const Weight& w, const void* x, const float* s, const float* b, void* y, int64_t M, int64_t N,
                       int64_t K, int64_t out_kind, int64_t num_threads) {
    if (!iq_amx::permitted()) {  // the kernel refused the tile state: AVX512-BF16, same numbers
        widening_gemm_as<BF16>(w, x, s, b, y, M, N, K, out_kind, num_threads);
        return;
    }
    constexpr int64_t KC = slice_depth<BF16>();
    const uint16_t* xh = static_cast<const uint16_t*>(x);
    // per thread: the last rows of X, zero-padded to a whole 32-row block (a tile always reads 16 rows)
    thread_local uint16_t* tail = nullptr;
    walk_panels<BF16, AMX_MR>(
        w, x, s, b, y, M, N, K, out_kind, num_threads,
        [&](int64_t m, int64_t k0, const uint32_t* bp, int64_t kc, float* cm, bool first) {
            const int64_t live = std::min(AMX_MR, M - m);
            if (live == AMX_MR) {
                amx_block(xh + m * K + k0, K, bp, kc, cm, first);
                return;
            }
            std::memset(tail, 0, AMX_MR * kc * sizeof(uint16_t));
            for (int64_t r = 0; r < live; ++r) std::memcpy(tail + r * kc, xh + (m + r) * K + k0, kc * sizeof(uint16_t));
            amx_block(tail, kc, bp, kc, cm, first);
        },
        [] {
            iq_amx::configure();
            tail = static_cast<uint16_t*>(std::aligned_alloc(64, AMX_MR * KC * sizeof(uint16_t)));
        },
        [] {
            std::free(tail);
            tail = nullptr;
            _tile_release();
        });
}
#endif

template <typename Weight>
int64_t widening_gemm(int64_t compute, const Weight& w, const void* x, const float* s, const float* b, void* y,
                      int64_t M, int64_t N, int64_t K, int64_t out_kind, int64_t num_threads) {
    switch (compute) {
        case BF16: widening_gemm_as<BF16>(w, x, s, b, y, M, N, K, out_kind, num_threads); return 1;
        case F32: widening_gemm_as<F32>(w, x, s, b, y, M, N, K, out_kind, num_threads); return 1;
        case F32_VIA_F16: widening_gemm_as<F32_VIA_F16>(w, x, s, b, y, M, N, K, out_kind, num_threads); return 1;
#ifdef INDUCTOR_QUANT_AMX
        case BF16_AMX: widening_gemm_amx(w, x, s, b, y, M, N, K, out_kind, num_threads); return 1;
#else
        case BF16_AMX: widening_gemm_as<BF16>(w, x, s, b, y, M, N, K, out_kind, num_threads); return 1;  // no AMX build
#endif
        default: return 0;
    }
}

// Eager decode GEMV on the blocked int8 layout (bf16 X, M <= 8): threads take 4-row blocks (one contiguous
// stream each), 32 weights per row per step widened exactly to bf16, dot products against up to 4 rows of X.
template <int MT>
void gemv_block(const int8_t* w, int64_t K, const uint16_t* x, float* out) {
    __m512 acc[MT][4];
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k = 0, off = 0; k < K; k += 32, off += 128) {
        _mm_prefetch(reinterpret_cast<const char*>(w + off + 32 * 128), _MM_HINT_T0);
        __m512bh wv[4];
        for (int r = 0; r < 4; ++r) {
            const int8_t* run = w + off + r * 32;
            const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(run))));
            const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(run + 16))));
            wv[r] = _mm512_cvtne2ps_pbh(hi, lo);
        }
        for (int m = 0; m < MT; ++m) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * K + k);
            for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
        }
    }
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < 4; ++r) out[m * 4 + r] = _mm512_reduce_add_ps(acc[m][r]);
}

void gemv_rows(int64_t mt, const int8_t* w, int64_t K, const uint16_t* x, float* out) {
    switch (mt) {
        case 4: gemv_block<4>(w, K, x, out); break;
        case 3: gemv_block<3>(w, K, x, out); break;
        case 2: gemv_block<2>(w, K, x, out); break;
        default: gemv_block<1>(w, K, x, out); break;
    }
}
}  // namespace

// compute: 0 = bf16 X, 1 = fp32 X, 2 = fp16 X widened to fp32 by the caller (W rounded to fp16), 3 = bf16 X on AMX
// tiles (computed as 0 where this build has no AMX or the kernel refuses the tile state)
// blocked: q is in the blocked decode layout (else row-major [N, K])
extern "C" int64_t inductor_quant_int8_gemm(int64_t compute, const void* x, const int8_t* q, int64_t blocked,
                                            const float* s, const float* b, void* y, int64_t M, int64_t N, int64_t K,
                                            int64_t out_kind, int64_t num_threads) {
    if (K % 32 != 0) return 0;
    return widening_gemm(compute, Int8Weight{q, K, N, blocked != 0}, x, s, b, y, M, N, K, out_kind, num_threads);
}

// Y = (X @ W^T) * s (+ b) for bf16 X [M, K] (compute 0), M <= 8, W blocked; out_kind as above
extern "C" int64_t inductor_quant_int8_gemv_blocked(int64_t compute, const void* x, const int8_t* q, const float* s,
                                                    const float* b, void* y, int64_t M, int64_t N, int64_t K,
                                                    int64_t out_kind, int64_t num_threads) {
    if (compute != BF16 || K % 32 != 0 || M > 8) return 0;
    const uint16_t* xk = static_cast<const uint16_t*>(x);
    const int64_t blocks = (N + 3) / 4;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t nb = 0; nb < blocks; ++nb) {
        alignas(64) float acc[8 * 4];
        for (int64_t m = 0; m < M; m += 4) gemv_rows(std::min<int64_t>(4, M - m), q + nb * 4 * K, K, xk + m * K, acc + m * 4);
        for (int64_t m = 0; m < M; ++m)
            for (int64_t r = 0; r < std::min<int64_t>(4, N - nb * 4); ++r) {
                const int64_t n = nb * 4 + r;
                const float v = acc[m * 4 + r] * s[n] + (b ? b[n] : 0.f);
                if (out_kind == 0) {
                    static_cast<float*>(y)[m * N + n] = v;
                } else if (out_kind == 1) {
                    static_cast<uint16_t*>(y)[m * N + n] = _mm_cvtsi128_si32((__m128i)_mm_cvtneps_pbh(_mm_set_ss(v))) & 0xFFFF;
                } else {
                    static_cast<uint16_t*>(y)[m * N + n] = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                }
            }
    }
    return 1;
}

// blocked: q is in the blocked decode layout (K % 128 == 0), else row-major [N, K / 2]
extern "C" int64_t inductor_quant_int4_gemm(int64_t compute, const void* x, const uint8_t* q, int64_t blocked,
                                            const float* s, const float* zp, int64_t group_size, const float* b,
                                            void* y, int64_t M, int64_t N, int64_t K, int64_t out_kind,
                                            int64_t num_threads) {
    if (K % 32 != 0 || group_size % 32 != 0 || K % group_size != 0 || (blocked && K % 128 != 0)) return 0;
    return widening_gemm(compute, Int4Weight{q, s, zp, K, N, group_size, blocked != 0}, x, nullptr, b, y, M, N, K,
                         out_kind, num_threads);
}

extern "C" int64_t inductor_quant_int8_block_gemm(int64_t compute, const void* x, const int8_t* q, const float* s,
                                                  int64_t block_size, const float* b, void* y, int64_t M, int64_t N,
                                                  int64_t K, int64_t out_kind, int64_t num_threads) {
    if (K % 32 != 0 || block_size % 32 != 0 || K % block_size != 0) return 0;
    return widening_gemm(compute, Int8BlockWeight{Int8Weight{q, K, N, false}, s, block_size}, x, nullptr, b, y, M, N, K,
                         out_kind, num_threads);
}
#else
extern "C" int64_t inductor_quant_int8_gemm(int64_t, const void*, const int8_t*, int64_t, const float*, const float*,
                                            void*, int64_t, int64_t, int64_t, int64_t, int64_t) {
    return 0;
}

extern "C" int64_t inductor_quant_int8_gemv_blocked(int64_t, const void*, const int8_t*, const float*, const float*,
                                                    void*, int64_t, int64_t, int64_t, int64_t, int64_t) {
    return 0;
}

extern "C" int64_t inductor_quant_int4_gemm(int64_t, const void*, const uint8_t*, int64_t, const float*, const float*,
                                            int64_t, const float*, void*, int64_t, int64_t, int64_t, int64_t, int64_t) {
    return 0;
}

extern "C" int64_t inductor_quant_int8_block_gemm(int64_t, const void*, const int8_t*, const float*, int64_t,
                                                  const float*, void*, int64_t, int64_t, int64_t, int64_t, int64_t) {
    return 0;
}
#endif

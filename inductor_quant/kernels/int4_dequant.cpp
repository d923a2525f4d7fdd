// Widen rows of an int4 groupwise weight to bf16 / fp16 / fp32 for the prefill GEMM:
//   W[n, k] = (q[n, k] - zp[n, k / g]) * s[n, k / g], computed in fp32, rounded once to the output dtype.
// q: uint8 [rows, K / 2], k = 2j in the low nibble of byte j, k = 2j + 1 in the high nibble.
// s, zp: fp32 [rows, K / g]; g is a multiple of 32. Rows are split across OpenMP threads.
#include <immintrin.h>
#include <cstdint>
#include <cstring>

namespace {
inline uint16_t iq_to_bf16(float f) {  // round to nearest even, as torch does
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1);
    return static_cast<uint16_t>(u >> 16);
}

// out_kind: 0 fp32, 1 bf16, 2 fp16
template <int OUT_KIND>
inline void iq_store(float a, void* out, int64_t i) {
    if constexpr (OUT_KIND == 0) static_cast<float*>(out)[i] = a;
    else if constexpr (OUT_KIND == 1) static_cast<uint16_t*>(out)[i] = iq_to_bf16(a);
    else static_cast<_Float16*>(out)[i] = static_cast<_Float16>(a);
}

// 32 values = 16 bytes of one group: (q - zp) * s in fp32, in k order
template <int OUT_KIND>
inline void iq_dequant_32(const uint8_t* q, float scale, float zero, void* out, int64_t i) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(zero);
    const __m512i nibble = _mm512_set1_epi32(0xF);
    const __m512 lo = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(d, nibble)), vz), vs);
    const __m512 hi = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(d, 4)), vz), vs);
    // interleave: k = 2j from lo[j], k = 2j + 1 from hi[j]
    const __m512i first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i second = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    const __m512 a = _mm512_permutex2var_ps(lo, first, hi);
    const __m512 b = _mm512_permutex2var_ps(lo, second, hi);
    if constexpr (OUT_KIND == 0) {
        _mm512_storeu_ps(static_cast<float*>(out) + i, a);
        _mm512_storeu_ps(static_cast<float*>(out) + i + 16, b);
    } else if constexpr (OUT_KIND == 1) {
        _mm512_storeu_si512(static_cast<uint16_t*>(out) + i, (__m512i)_mm512_cvtne2ps_pbh(b, a));
    } else {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i),
                            _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i + 16),
                            _mm512_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
#else
    for (int64_t j = 0; j < 16; ++j) {
        iq_store<OUT_KIND>((static_cast<float>(q[j] & 0xF) - zero) * scale, out, i + 2 * j);
        iq_store<OUT_KIND>((static_cast<float>(q[j] >> 4) - zero) * scale, out, i + 2 * j + 1);
    }
#endif
}

template <int OUT_KIND>
void iq_dequant(const uint8_t* q, const float* s, const float* zp, void* out, int64_t rows, int64_t K, int64_t g) {
    const int64_t groups = K / g;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < rows; ++n)
        for (int64_t gi = 0; gi < groups; ++gi) {
            const float scale = s[n * groups + gi], zero = zp[n * groups + gi];
            for (int64_t k = gi * g; k < (gi + 1) * g; k += 32)
                iq_dequant_32<OUT_KIND>(q + n * (K / 2) + k / 2, scale, zero, out, n * K + k);
        }
}
}  // namespace

extern "C" void inductor_quant_int4_dequant(const uint8_t* q, const float* s, const float* zp, void* out,
                                            int64_t rows, int64_t K, int64_t g, int64_t out_kind) {
    if (out_kind == 0) iq_dequant<0>(q, s, zp, out, rows, K, g);
    else if (out_kind == 1) iq_dequant<1>(q, s, zp, out, rows, K, g);
    else iq_dequant<2>(q, s, zp, out, rows, K, g);
}

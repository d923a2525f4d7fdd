// Decode attention: Y[b, h, m, :] = softmax(Q[b, h, m, :] . K[b, h / G, l, :] * SCALE (+ mask) over l) . V[b, h / G, l, :]
// for a few query rows M over a KV cache of L positions, G query heads per KV head (grouped, never repeated).
//
// One (b, h, m) row per iteration of a parallel loop:
//   * scores in fp32 for the positions the mask keeps (a bool mask's false / a causal row's future positions are
//     skipped, so a static cache costs the positions it holds, not its length);
//   * softmax in fp32 (vectorized exp), the weighted sum of the kept rows of V in fp32;
//   * one rounding to Y's dtype. A row with every position masked is NaN, as ATen's math form.
// Q, K, V, the mask and Y are dense row-major from offset 0 (lowerings.common.kernel_inputs); a mask dimension of
// size 1 is broadcast (its stride is 0 here).
// ---
{{template.header().getvalue()}}
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <limits>
#include <memory>

#ifndef INDUCTOR_QUANT_ATTENTION_HELPERS
#define INDUCTOR_QUANT_ATTENTION_HELPERS  // a graph's kernels share one translation unit: define helpers once
namespace {
inline float iq_f32(float v) { return v; }
inline float iq_f32(at::Half v) { return static_cast<float>(v); }
inline float iq_f32(at::BFloat16 v) {
    // the bf16 bits are the high half of the fp32 ones (exact); written out so the loops below vectorize
    uint16_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    const uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float out;
    std::memcpy(&out, &wide, sizeof(out));
    return out;
}
using IqVec = at::vec::Vectorized<float>;
// Vec::size() consecutive values as fp32 (bf16: the bits shifted into place, exact)
inline IqVec iq_load(const float* p) { return IqVec::loadu(p); }
inline IqVec iq_load(const at::BFloat16* p) {
#if defined(CPU_CAPABILITY_AVX512)
    return IqVec(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16)));
#elif defined(CPU_CAPABILITY_AVX2)
    return IqVec(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16)));
#else
    alignas(64) float f[IqVec::size()];
    for (int64_t e = 0; e < IqVec::size(); ++e) f[e] = iq_f32(p[e]);
    return IqVec::loadu(f);
#endif
}
inline IqVec iq_load(const at::Half* p) {
    alignas(64) float f[IqVec::size()];
    for (int64_t e = 0; e < IqVec::size(); ++e) f[e] = iq_f32(p[e]);
    return IqVec::loadu(f);
}
}  // namespace
#endif  // INDUCTOR_QUANT_ATTENTION_HELPERS

extern "C" {{export_declaration}}
{{kernel.def_kernel(inputs={"Q": Q, "K": K, "V": V, "MASK": MASK}, outputs={"Y": Y}, aliases=None)}}
{
    // inductor_quant decode_attention: B={{B}} Hq={{HQ}} M={{M}} D={{D}} Hkv={{HKV}} L={{L}} Dv={{DV}} mask={{ mask_kind }} causal={{ causal }}
    constexpr int64_t B = {{B}}, HQ = {{HQ}}, M = {{M}}, D = {{D}}, HKV = {{HKV}}, L = {{L}}, DV = {{DV}};
    constexpr int64_t G = HQ / HKV;
    constexpr float SCALE = {{scale}};
{%- if MASK is not none %}
    constexpr int64_t MASK_SB = {{mask_strides[0]}}, MASK_SH = {{mask_strides[1]}}, MASK_SM = {{mask_strides[2]}};
{%- endif %}
    using Vec = IqVec;
    constexpr int64_t VL = Vec::size();

    #pragma omp parallel num_threads({{num_threads}})
    {
        // per thread: the kept positions of a row and their scores, then probabilities
        std::unique_ptr<float[]> s_owner(new float[L]);
        std::unique_ptr<int32_t[]> at_owner(new int32_t[L]);
        float* s = s_owner.get();
        int32_t* at = at_owner.get();
        alignas(64) float q[D];
        alignas(64) float acc[DV];
        #pragma omp for schedule(static)
        for (int64_t row = 0; row < B * HQ * M; ++row) {
            const int64_t b = row / (HQ * M), h = (row / M) % HQ, m = row % M;
            const auto* qp = Q + row * D;
            for (int64_t d = 0; d < D; ++d) q[d] = iq_f32(qp[d]) * SCALE;
            const auto* kp = K + (b * HKV + h / G) * L * D;
            const auto* vp = V + (b * HKV + h / G) * L * DV;
{%- if MASK is not none %}
            const auto* mp = MASK + b * MASK_SB + h * MASK_SH + m * MASK_SM;
{%- endif %}
{%- if causal %}
            const int64_t end = std::min<int64_t>(L, m + 1);  // top-left aligned, as ATen's is_causal
{%- else %}
            const int64_t end = L;
{%- endif %}
            // --- scores of the kept positions ---
            int64_t n = 0;
            float top = -std::numeric_limits<float>::infinity();
            for (int64_t l = 0; l < end; ++l) {
{%- if mask_kind == "bool" %}
                if (!mp[l]) continue;
{%- endif %}
                const auto* kl = kp + l * D;
                Vec va(0.f);
                int64_t d = 0;
                for (; d + VL <= D; d += VL) va = at::vec::fmadd(Vec::loadu(q + d), iq_load(kl + d), va);
                float dot = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, va);
                for (; d < D; ++d) dot += q[d] * iq_f32(kl[d]);
{%- if mask_kind == "float" %}
                dot += iq_f32(mp[l]);
                if (dot == -std::numeric_limits<float>::infinity()) continue;
{%- endif %}
                s[n] = dot;
                at[n++] = static_cast<int32_t>(l);
                top = std::max(top, dot);
            }
            auto* y = Y + row * DV;
            if (n == 0) {
                for (int64_t d = 0; d < DV; ++d) y[d] = static_cast<{{kernel.dtype(Y)}}>(std::numeric_limits<float>::quiet_NaN());
                continue;
            }
            // --- softmax numerators exp(s - top), their sum ---
            const Vec vtop(top);
            Vec vsum(0.f);
            int64_t j = 0;
            for (; j + VL <= n; j += VL) {
                const Vec p = (Vec::loadu(s + j) - vtop).exp();
                p.store(s + j);
                vsum = vsum + p;
            }
            if (j < n) {
                const Vec p = (Vec::loadu(s + j, n - j) - vtop).exp();
                p.store(s + j, n - j);
                vsum = vsum + Vec::set(Vec(0.f), p, n - j);
            }
            const float sum = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, vsum);
            // --- the weighted sum of the kept rows of V ---
            for (int64_t d = 0; d < DV; ++d) acc[d] = 0.f;
            for (j = 0; j < n; ++j) {
                const Vec p(s[j]);
                const auto* vl = vp + static_cast<int64_t>(at[j]) * DV;
                int64_t d = 0;
                for (; d + VL <= DV; d += VL) at::vec::fmadd(p, iq_load(vl + d), Vec::loadu(acc + d)).store(acc + d);
                for (; d < DV; ++d) acc[d] += s[j] * iq_f32(vl[d]);
            }
            const float inv = 1.f / sum;
            for (int64_t d = 0; d < DV; ++d) y[d] = static_cast<{{kernel.dtype(Y)}}>(acc[d] * inv);
        }
    }
{%- if epilogue_nodes %}
    // --- fused epilogue nodes over the whole output ---
    {{ store_epilogue() }}
{%- endif %}
}

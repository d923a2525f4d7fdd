// int8 weight-only GEMV-shaped GEMM for decode (small M): Y[M, N] = (X[M, K] @ W[N, K]^T) * S[N] (+ B[N]).
//
// Decode is bound by how fast the int8 weight streams from memory, so the kernel reads every weight byte exactly
// once and does everything else around that stream:
//   * the activations are converted to fp32 once, zero-padded to a multiple of the vector width (KP);
//   * the N rows of W are split across the threads in blocks of NR rows; a block is walked along K in chunks of
//     KC values, each chunk widened int8 -> fp32 into a small buffer that stays in L1 while all M rows of X use it;
//   * accumulation is fp32; the scale (and bias) are applied once per output in fp32, then one rounding to Y's dtype.
// ---
{{template.header().getvalue()}}
#include <immintrin.h>
#include <cstring>
#include <memory>

#ifndef INDUCTOR_QUANT_INT8_GEMV_HELPERS
#define INDUCTOR_QUANT_INT8_GEMV_HELPERS  // a graph's kernels share one translation unit: define helpers once
namespace {
constexpr int64_t {{prefix}}VEC = 16;     // fp32 lanes in a 512-bit register
constexpr int64_t {{prefix}}NR = {{NR}};  // weight rows per block: {{NR}} streams in flight, {{NR}} x MT accumulators
constexpr int64_t {{prefix}}MT = 4;       // activation rows per register tile: NR * MT = 16 of 32 zmm registers
constexpr int64_t {{prefix}}KC = {{KC}};  // K chunk: NR * KC * 4 bytes of widened weights stay in L1

// --- micro-kernel: acc[MT][NR] += X[MT rows, kc] . Wf[NR rows, kc] over one widened chunk ---
template <int MTILE>
inline void {{prefix}}tile(const float* x, int64_t ldx, const float* wf, int64_t kc, float* acc_out) {
#ifdef __AVX512F__
    __m512 acc[MTILE][{{prefix}}NR];
    for (int m = 0; m < MTILE; ++m)
        for (int r = 0; r < {{prefix}}NR; ++r) acc[m][r] = _mm512_loadu_ps(acc_out + (m * {{prefix}}NR + r) * {{prefix}}VEC);
    for (int64_t k = 0; k < kc; k += {{prefix}}VEC) {
        __m512 w[{{prefix}}NR];
        for (int r = 0; r < {{prefix}}NR; ++r) w[r] = _mm512_load_ps(wf + r * {{prefix}}KC + k);
        for (int m = 0; m < MTILE; ++m) {
            const __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
            for (int r = 0; r < {{prefix}}NR; ++r) acc[m][r] = _mm512_fmadd_ps(xv, w[r], acc[m][r]);
        }
    }
    for (int m = 0; m < MTILE; ++m)
        for (int r = 0; r < {{prefix}}NR; ++r) _mm512_storeu_ps(acc_out + (m * {{prefix}}NR + r) * {{prefix}}VEC, acc[m][r]);
#else
    for (int m = 0; m < MTILE; ++m)
        for (int r = 0; r < {{prefix}}NR; ++r)
            for (int64_t k = 0; k < kc; ++k)
                acc_out[(m * {{prefix}}NR + r) * {{prefix}}VEC + (k % {{prefix}}VEC)] += x[m * ldx + k] * wf[r * {{prefix}}KC + k];
#endif
}

// --- widen NR rows x kc int8 weights to fp32 (rows past `rows` and columns past `valid` become 0) ---
inline void {{prefix}}widen(const int8_t* w, int64_t ldw, int64_t rows, int64_t valid, int64_t kc, float* wf) {
    for (int64_t r = 0; r < {{prefix}}NR; ++r) {
        float* dst = wf + r * {{prefix}}KC;
        const int8_t* src = w + r * ldw;
        const int64_t n_valid = r < rows ? valid : 0;
        int64_t k = 0;
#ifdef __AVX512F__
        for (; k + {{prefix}}VEC <= n_valid; k += {{prefix}}VEC) {
            const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
            _mm512_store_ps(dst + k, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
        }
#endif
        for (; k < n_valid; ++k) dst[k] = static_cast<float>(src[k]);
        for (; k < kc; ++k) dst[k] = 0.f;
    }
}
}  // namespace
#endif  // INDUCTOR_QUANT_INT8_GEMV_HELPERS

extern "C" {{export_declaration}}
{{kernel.def_kernel(inputs={"X": X, "W": W, "S": S, "B": B}, outputs={"Y": Y}, aliases=aliases)}}
{
    constexpr int64_t M = {{M}};
    constexpr int64_t N = {{N}};
    constexpr int64_t K = {{K}};
    constexpr int64_t KP = (K + {{prefix}}VEC - 1) / {{prefix}}VEC * {{prefix}}VEC;

    // --- activations: fp32 copy, zero-padded to KP ---
    std::unique_ptr<float[]> xf_owner(new float[M * KP + {{prefix}}VEC]);
    float* xf = xf_owner.get();
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t k = 0; k < K; ++k) xf[m * KP + k] = static_cast<float>(X[m * K + k]);
        for (int64_t k = K; k < KP; ++k) xf[m * KP + k] = 0.f;
    }

    // --- stream W once: row blocks across threads ---
    constexpr int64_t n_blocks = (N + {{prefix}}NR - 1) / {{prefix}}NR;
    #pragma omp parallel for num_threads({{num_threads}}) schedule(static)
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
        const int64_t n0 = nb * {{prefix}}NR;
        const int64_t rows = std::min<int64_t>({{prefix}}NR, N - n0);
        alignas(64) float wf[{{prefix}}NR * {{prefix}}KC];
        alignas(64) float acc[M * {{prefix}}NR * {{prefix}}VEC];
        std::memset(acc, 0, sizeof(acc));
        for (int64_t k0 = 0; k0 < KP; k0 += {{prefix}}KC) {
            const int64_t kc = std::min<int64_t>({{prefix}}KC, KP - k0);
            {{prefix}}widen(W + n0 * K + k0, K, rows, std::max<int64_t>(0, std::min<int64_t>(kc, K - k0)), kc, wf);
            int64_t m = 0;
            for (; m + {{prefix}}MT <= M; m += {{prefix}}MT)
                {{prefix}}tile<{{prefix}}MT>(xf + m * KP + k0, KP, wf, kc, acc + m * {{prefix}}NR * {{prefix}}VEC);
            switch (M - m) {
                case 3: {{prefix}}tile<3>(xf + m * KP + k0, KP, wf, kc, acc + m * {{prefix}}NR * {{prefix}}VEC); break;
                case 2: {{prefix}}tile<2>(xf + m * KP + k0, KP, wf, kc, acc + m * {{prefix}}NR * {{prefix}}VEC); break;
                case 1: {{prefix}}tile<1>(xf + m * KP + k0, KP, wf, kc, acc + m * {{prefix}}NR * {{prefix}}VEC); break;
                default: break;
            }
        }
        // --- epilogue: horizontal sum, * scale (+ bias) in fp32, one rounding to Y's dtype ---
        for (int64_t m = 0; m < M; ++m) {
            for (int64_t r = 0; r < rows; ++r) {
                const float* a = acc + (m * {{prefix}}NR + r) * {{prefix}}VEC;
                float sum = 0.f;
                for (int64_t l = 0; l < {{prefix}}VEC; ++l) sum += a[l];
                float out = sum * static_cast<float>(S[n0 + r]);
{%- if B is not none %}
                out += static_cast<float>(B[n0 + r]);
{%- endif %}
                Y[m * N + n0 + r] = static_cast<{{kernel.dtype(Y)}}>(out);
            }
        }
    }
{%- if epilogue_nodes %}
    // --- fused epilogue nodes (activation, residual, ...) over the whole output ---
    {{ store_epilogue() }}
{%- endif %}
}

// Repack int4 nibbles into the W4A8 lane layout (primitives.pack_int4_lanes, whose torch code is the reference):
// in: int32 [N / 16 * 16][K / 8], one word = 8 values of a row (bytes b0..b3: k = 0, 1 | 2, 3 | 4, 5 | 6, 7, low |
// high nibble); out: int32 [N / 16][K / 8][16], each word's bytes k0 | k4, k1 | k5, k2 | k6, k3 | k7.
// Blocks of 16 rows are split across OpenMP threads.
#include <cstdint>

extern "C" void inductor_quant_pack_int4_lanes(const uint32_t* in, uint32_t* out, int64_t n_blocks, int64_t k8) {
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b)
        for (int64_t r = 0; r < 16; ++r) {
            const uint32_t* src = in + (b * 16 + r) * k8;
            uint32_t* dst = out + b * k8 * 16 + r;
            for (int64_t t = 0; t < k8; ++t) {
                const uint32_t w = src[t];
                dst[t * 16] = (w & 0xFu) | ((w >> 12) & 0xF0u) | ((w << 4) & 0xF00u) | ((w >> 8) & 0xF000u) |
                              ((w << 8) & 0xF0000u) | ((w >> 4) & 0xF00000u) | ((w << 12) & 0xF000000u) |
                              (w & 0xF0000000u);
            }
        }
}

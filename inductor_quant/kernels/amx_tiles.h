// AMX tile helpers shared by the native GEMM (widening_gemm.cpp) and the CPP decode templates. Their sources are
// compiled from strings, so kernels.inline_includes puts this file in place of their `#include "amx_tiles.h"`.
#ifndef INDUCTOR_QUANT_AMX_TILES
#define INDUCTOR_QUANT_AMX_TILES
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <sys/syscall.h>
#include <unistd.h>
#include <cstdint>

namespace iq_amx {
struct TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Linux lets a process use the tile registers once it asked (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
// asked here, once per process, so that a kernel loaded from a cache in a new process has the permission too
inline bool permitted() {
    static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return ok;
}

// tiles 0-7: 16 rows of 64 bytes each (16 x 16 fp32 sums, 16 rows x 32 bf16, 16 pairs x 16 columns)
inline void configure() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}

// The decode GEMVs (the weight as A, the activations as B): the sums of 32 weight rows x 16 * MT activation rows
// are tiles 0-1 (MT = 1) or 0-3 (MT = 2: weight rows 0-15 / 16-31 x activation rows 0-15 / 16-31).
template <int MT>
inline void zero_sums() {
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (MT == 2) {
        _tile_zero(2);
        _tile_zero(3);
    }
}

// tiles 4-5 <- 32 weight rows x 32 bf16 at a (64-byte rows); tile 6 (and 7) <- the activations' bf16 pairs at xk,
// 16 * MT per row; the sums += their products
template <int MT>
inline void decode_step(const uint16_t* a, const uint32_t* xk) {
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a + 16 * 32, 64);
    _tile_loadd(6, xk, 64 * MT);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 5, 6);
    if constexpr (MT == 2) {
        _tile_loadd(7, xk + 16, 64 * MT);
        _tile_dpbf16ps(2, 4, 7);
        _tile_dpbf16ps(3, 5, 7);
    }
}

// c[r * 16 * MT + m] <- the sums of weight row r and activation row m
template <int MT>
inline void store_sums(float* c) {
    _tile_stored(0, c, 64 * MT);
    _tile_stored(1, c + 16 * 16 * MT, 64 * MT);
    if constexpr (MT == 2) {
        _tile_stored(2, c + 16, 64 * MT);
        _tile_stored(3, c + 16 * 16 * MT + 16, 64 * MT);
    }
}
}  // namespace iq_amx
#endif
#endif

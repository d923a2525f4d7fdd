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
}  // namespace iq_amx
#endif
#endif

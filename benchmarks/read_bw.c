// Memory read bandwidth probe for benchmarks/: every thread streams its share of a buffer larger than the
// last-level cache, with the same software prefetching as the package's GEMV kernel, and keeps a running sum so
// the loads cannot be optimized away. Built by read_bw.py with the system C compiler; no torch headers.
#include <immintrin.h>
#include <stdint.h>
#include <stddef.h>

double iq_read_sum(const uint8_t* buf, size_t n, int prefetch_bytes) {
    double total = 0;
    #pragma omp parallel reduction(+ : total)
    {
        __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
        #pragma omp for schedule(static)
        for (size_t i = 0; i < n; i += 128) {
            _mm_prefetch((const char*)(buf + i + prefetch_bytes), _MM_HINT_T0);
            _mm_prefetch((const char*)(buf + i + prefetch_bytes + 64), _MM_HINT_T0);
            acc0 = _mm512_add_epi64(acc0, _mm512_sad_epu8(_mm512_loadu_si512(buf + i), _mm512_setzero_si512()));
            acc1 = _mm512_add_epi64(acc1, _mm512_sad_epu8(_mm512_loadu_si512(buf + i + 64), _mm512_setzero_si512()));
        }
        total += (double)_mm512_reduce_add_epi64(_mm512_add_epi64(acc0, acc1));
    }
    return total;
}

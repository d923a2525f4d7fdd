"""Memory read bandwidth of this machine, measured the way the GEMV kernel reads (see read_bw.c)."""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path

import torch

from inductor_quant.demo.timing import median_seconds

_SOURCE = Path(__file__).with_name("read_bw.c")


def read_bandwidth_gbs(nbytes: int = 1 << 30, reps: int = 7) -> tuple[float, str]:
    """Best median over prefetch distances of a streaming read of ``nbytes``; also says how it was measured."""
    lib_path = Path(tempfile.mkdtemp()) / "read_bw.so"
    subprocess.run(
        ["cc", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(_SOURCE), "-o", str(lib_path)],
        check=True,
    )
    lib = ctypes.CDLL(str(lib_path))
    lib.iq_read_sum.restype = ctypes.c_double
    lib.iq_read_sum.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    buf = torch.ones(nbytes + 4096, dtype=torch.uint8)
    best, best_pd = 0.0, 0
    for prefetch in (0, 1024, 2048, 4096):
        seconds = median_seconds(lambda p=prefetch: lib.iq_read_sum(buf.data_ptr(), nbytes, p), reps=reps)
        if nbytes / seconds / 1e9 > best:
            best, best_pd = nbytes / seconds / 1e9, prefetch
    torch_sum = nbytes / median_seconds(lambda: buf[:nbytes].view(torch.int64).sum(), reps=reps) / 1e9
    how = (
        f"AVX-512 streaming read of 1 GiB, {torch.get_num_threads()} threads, prefetch {best_pd} B "
        f"(torch.sum over the same buffer: {torch_sum:.1f} GB/s)"
    )
    return best, how


if __name__ == "__main__":
    gbs, how = read_bandwidth_gbs()
    print(f"{gbs:.1f} GB/s: {how}")

"""Memory read bandwidth of this machine, measured the way the GEMV kernel reads (see read_bw.c)."""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path

import torch

from inductor_quant.demo.timing import median_seconds

_SOURCE = Path(__file__).with_name("read_bw.c")
PREFETCH_DISTANCES = (0, 1024, 2048, 4096)  # bytes ahead; the best one for this machine is kept


class ReadProbe:
    """A callable that streams ``nbytes`` once (time it beside the kernels: the bandwidth drifts over minutes)."""

    def __init__(self, nbytes: int = 1 << 30):
        self.nbytes = nbytes
        self.lib = _load()
        self.buf = torch.ones(nbytes + 8192, dtype=torch.uint8)
        self.prefetch = min(PREFETCH_DISTANCES, key=lambda p: median_seconds(lambda: self._read(p), reps=3))

    def _read(self, prefetch: int) -> float:
        return self.lib.iq_read_sum(self.buf.data_ptr(), self.nbytes, prefetch)

    def __call__(self) -> float:
        return self._read(self.prefetch)


def _load() -> ctypes.CDLL:
    lib_path = Path(tempfile.mkdtemp()) / "read_bw.so"
    cmd = ["cc", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(_SOURCE), "-o", str(lib_path)]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.iq_read_sum.restype = ctypes.c_double
    lib.iq_read_sum.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib


if __name__ == "__main__":
    probe = ReadProbe()
    seconds = median_seconds(probe)
    print(f"{probe.nbytes / seconds / 1e9:.1f} GB/s (prefetch {probe.prefetch} B)")

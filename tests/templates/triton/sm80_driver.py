"""Test-only: the Triton driver both shims make active. It reports an sm_80 CUDA target (Inductor hashes it and
parses options with it) and answers the device / stream queries trivially; where kernels run, and how they are
timed, is the shim's choice."""

from __future__ import annotations


def sm80_driver(torch_device, device_interface, benchmarker):
    """A driver for ``triton.runtime.driver.set_active``: ``torch_device`` is where Triton thinks tensors live,
    ``device_interface`` the torch module answering for it, ``benchmarker()`` its timing function."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class Sm80Driver(DriverBase):
        def is_active(self):
            return True

        def map_python_to_cpp_type(self, ty):
            return ty

        def get_current_target(self):
            return GPUTarget("cuda", 80, 32)

        def get_active_torch_device(self):
            return torch_device

        def get_device_interface(self):
            return device_interface

        def get_benchmarker(self):
            return benchmarker()

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

    return Sm80Driver()

"""The GPU this process can use, if any: its architecture, or why there is none."""
from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")


@dataclass(frozen=True)
class GpuProbe:
    arch: str | None        # "sm_90" when a GPU and its driver are present
    name: str = ""
    reason: str = ""        # why there is no usable GPU

    @property
    def present(self) -> bool:
        return self.arch is not None


def probe() -> GpuProbe:
    """Device 0 through cuda-core; never raises (no package, no driver, no device -> reason)."""
    try:
        from cuda.core import Device
    except ImportError:
        return GpuProbe(None, reason="cuda-core is not installed (pip install 'qcompile[cuda]')")
    try:
        device = Device(0)
        major, minor = device.compute_capability
        return GpuProbe(f"sm_{major}{minor}", name=str(device.name))
    except Exception as err:  # noqa: BLE001 - no driver / no device, in many exception types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return GpuProbe(None, reason=f"no usable CUDA device ({first})")


def check_arch(arch: str) -> str:
    """`arch` if the engine has kernels for it, else ValueError listing the ones it has."""
    if arch not in ARCHS:
        raise ValueError(f"unknown GPU architecture {arch!r}; the engine builds for "
                         f"{', '.join(ARCHS)}")
    return arch

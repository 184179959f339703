"""The cuda-int8 toolchain without a GPU: NVRTC compiles a probe kernel for every
supported arch, cuobjdump shows its SASS, ptxas's report is parsed, the disk cache
answers the second compile, and compile errors and spills are reported."""
from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("cuda.bindings.nvrtc", reason="the CUDA pip packages are not installed "
                    "(pip install 'qcompile[cuda]')")

from qcompile.backends.cuda import nvrtc, sass, toolchain
from qcompile.backends.cuda.toolchain import CudaToolchainError, KernelCompileError, SassError
from qcompile.errors import BackendError

_PROBLEMS = toolchain.problems()
pytestmark = pytest.mark.skipif(bool(_PROBLEMS), reason="CUDA toolchain unusable: "
                                + "; ".join(_PROBLEMS))

TYPES_H = r"""
#pragma once
#include <cuda/std/cstdint>
typedef cuda::std::uint32_t u32;
"""

PROBE = r"""
#include "probe_types.h"
extern "C" __global__ void probe(const int4* __restrict__ src, int4* dst) {
  __shared__ __align__(128) int4 tile[64];
  u32 slot = (u32)__cvta_generic_to_shared(&tile[threadIdx.x]);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(slot), "l"(src + threadIdx.x));
  asm volatile("cp.async.commit_group;\n" ::);
  asm volatile("cp.async.wait_group 0;\n" ::);
  __syncthreads();
  u32 a0, a1, a2, a3;
  u32 row = (u32)__cvta_generic_to_shared(&tile[threadIdx.x % 32]);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3) : "r"(row));
  int c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  u32 b0 = a0 ^ a3, b1 = a1 ^ a2;
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+r"(c0), "+r"(c1), "+r"(c2), "+r"(c3)
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  dst[threadIdx.x] = make_int4(c0, c1, c2, c3);
}
"""

LOCAL_ARRAY = r"""
extern "C" __global__ void local_array(const int* in, int* out, int n) {
  int buf[256];
  for (int i = 0; i < 256; ++i) buf[i] = in[i * n + threadIdx.x];
  out[threadIdx.x] = buf[in[threadIdx.x] & 255];
}
"""

PRESSURE = r"""
extern "C" __global__ void pressure(const float* in, float* out, int n) {
  float acc[48];
  #pragma unroll
  for (int i = 0; i < 48; ++i) acc[i] = in[i * n + threadIdx.x];
  for (int k = 0; k < n; ++k) {
    #pragma unroll
    for (int i = 0; i < 48; ++i) acc[i] = acc[i] * acc[(i + 7) % 48] + in[k];
  }
  float s = 0.f;
  #pragma unroll
  for (int i = 0; i < 48; ++i) s += acc[i] * (float)i;
  out[threadIdx.x] = s;
}
"""

HEADERS = {"probe_types.h": TYPES_H}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cuda-cache"))


@pytest.fixture(scope="module", params=nvrtc.CUBIN_ARCHS)
def probe(request, cache_dir):
    """The probe kernel compiled for one arch, with its SASS."""
    compiled = nvrtc.compile_kernel(PROBE, "probe", request.param, headers=HEADERS,
                                    cache_dir=cache_dir)
    return compiled, sass.sass_text(compiled.cubin)


def test_toolchain_found_in_pip_packages():
    cuda_dir, cccl_dir = toolchain.include_dirs()
    assert os.path.isfile(os.path.join(cuda_dir, "cuda_runtime.h"))
    assert os.path.isfile(os.path.join(cccl_dir, "cuda", "std", "cstdint"))
    for tool in (toolchain.cuobjdump(), toolchain.nvdisasm()):
        assert os.access(tool, os.X_OK)
    assert toolchain._header_dir_from_wheels("cccl") is not None
    assert toolchain._binary_from_wheels("nvdisasm") is not None


def test_compiles_without_nvcc_or_a_toolkit(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for name in ("CUDA_HOME", "CUDA_PATH", "NVDISASM_PATH"):
        monkeypatch.delenv(name, raising=False)
    toolchain.header_dir.cache_clear()
    toolchain.binary.cache_clear()
    try:
        compiled = nvrtc.compile_kernel(PROBE, "probe", "sm_80", headers=HEADERS,
                                        use_cache=False)
        text = sass.sass_text(compiled.cubin)
    finally:
        toolchain.header_dir.cache_clear()
        toolchain.binary.cache_clear()
    assert sass.check_kernel(compiled, sass=text) == []


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(toolchain, "_pathfinder", lambda: None)
    monkeypatch.setattr(toolchain, "_nvidia_roots", list)
    toolchain.header_dir.cache_clear()
    try:
        with pytest.raises(CudaToolchainError, match="nvidia-cuda-cccl") as info:
            toolchain.header_dir("cccl")
    finally:
        toolchain.header_dir.cache_clear()
    assert isinstance(info.value, BackendError)
    assert "pip install 'qcompile[cuda]'" in str(info.value)


def test_probe_sass_has_tensor_core_and_async_copy(probe):
    compiled, text = probe
    counts = sass.sass_summary(text)["probe"]
    assert counts.get("IMMA") and counts.get("LDSM") and counts.get("LDGSTS")
    assert not counts.get("LDL") and not counts.get("STL")
    assert sass.check_kernel(compiled, sass=text) == []


def test_probe_ptxas_report_parsed(probe):
    compiled, _ = probe
    report = compiled.resources["probe"]
    assert report["registers"] > 0
    assert report["shared"] == 64 * 16
    assert report["spill_stores"] == report["spill_loads"] == 0
    assert f"for '{compiled.arch}'" in compiled.ptxas_log


def test_budgets_are_checked(probe):
    compiled, text = probe
    problems = sass.check_kernel(compiled, max_registers=4, max_shared=512, sass=text)
    assert any("registers" in p for p in problems)
    assert any("shared memory" in p for p in problems)


def test_ptx_for_compute_80(cache_dir):
    compiled = nvrtc.compile_ptx(PROBE, "probe", headers=HEADERS, cache_dir=cache_dir)
    assert compiled.cubin is None and compiled.arch == "compute_80"
    assert ".target sm_80" in compiled.ptx
    assert "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32" in compiled.ptx


def test_second_compile_reads_the_cache(tmp_path):
    include = tmp_path / "include"
    include.mkdir()
    (include / "scale.h").write_text("#define SCALE 3\n")
    source = '#include "scale.h"\nextern "C" __global__ void k(int* p) { p[0] *= SCALE; }\n'
    args = {"include_dirs": [str(include)], "cache_dir": str(tmp_path / "cache")}
    before = nvrtc.compile_count()
    first = nvrtc.compile_kernel(source, "k", "sm_80", **args)
    second = nvrtc.compile_kernel(source, "k", "sm_80", **args)
    assert nvrtc.compile_count() == before + 1
    assert second.key == first.key and second.cubin == first.cubin
    assert second.resources == first.resources
    (include / "scale.h").write_text("#define SCALE 5\n")
    third = nvrtc.compile_kernel(source, "k", "sm_80", **args)
    assert nvrtc.compile_count() == before + 2 and third.key != first.key


def test_syntax_error_is_typed(tmp_path):
    source = 'extern "C" __global__ void broken(int* p) { p[0] = 1 }\n'
    with pytest.raises(KernelCompileError) as info:
        nvrtc.compile_kernel(source, "broken", "sm_86", cache_dir=str(tmp_path))
    error = info.value
    assert isinstance(error, BackendError)
    assert error.kernel == "broken" and error.arch == "sm_86"
    assert "broken.cu(1): error" in str(error) and 'expected a ";"' in str(error)


def test_unsupported_arch():
    with pytest.raises(BackendError, match="sm_75"):
        nvrtc.compile_kernel(PROBE, "probe", "sm_75", headers=HEADERS)


def test_local_array_is_reported(cache_dir):
    compiled = nvrtc.compile_kernel(LOCAL_ARRAY, "local_array", "sm_80", cache_dir=cache_dir)
    problems = sass.check_kernel(compiled)
    assert any("local memory traffic" in p for p in problems)
    assert any("no IMMA" in p for p in problems)


def test_register_spill_is_reported(cache_dir):
    compiled = nvrtc.compile_kernel(PRESSURE, "pressure", "sm_89",
                                    options=["--maxrregcount=24"], cache_dir=cache_dir)
    assert compiled.resources["pressure"]["spill_stores"] > 0
    problems = sass.check_kernel(compiled, expect=())
    assert any("spill stores" in p for p in problems)


def test_sass_without_nvdisasm_is_an_error(tmp_path, monkeypatch, cache_dir):
    compiled = nvrtc.compile_kernel(LOCAL_ARRAY, "local_array", "sm_80", cache_dir=cache_dir)
    lonely = tmp_path / "cuobjdump"
    shutil.copy(toolchain.cuobjdump(), lonely)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("NVDISASM_PATH", raising=False)
    with pytest.raises(SassError, match="nvidia-cuda-nvdisasm"):
        sass.sass_text(compiled.cubin, cuobjdump=str(lonely),
                       nvdisasm=str(tmp_path / "missing" / "nvdisasm"))


def test_sass_summary_counts_mnemonics():
    text = """
\t\tFunction : f
        /*0000*/                   LDSM.16.M88.4 R8, [R0] ;          /* 0x000000000008783b */
        /*0010*/               @P0 IMMA.16832.S8.S8 R8, R8.ROW, R4.COL, RZ ;
        /*0020*/              @!PT LDL R2, [R1] ;
        /*0030*/                   IMMA.16832.S8.S8 R8, R8.ROW, R4.COL, RZ ;
\t\tFunction : g
        /*0000*/                   EXIT ;
"""
    assert sass.sass_summary(text) == {"f": {"LDSM": 1, "IMMA": 2, "LDL": 1}, "g": {"EXIT": 1}}


def test_nvrtc_outputs_are_read_into_fresh_buffers():
    """NVRTC writes its outputs into the buffer it is handed: an immutable shared bytes
    object there (b" " * 1 for an empty log) once corrupted the interpreter."""
    import ctypes

    from qcompile.backends.cuda import nvrtc

    class FakeNvrtc:
        class nvrtcResult:
            NVRTC_SUCCESS = 0

    def size_fn(prog):
        return 0, 1

    def get_fn(prog, buf):
        ctypes.memmove((ctypes.c_char * 1).from_buffer(buf), b"\x00", 1)
        return (0,)
    out = nvrtc._fetch(FakeNvrtc, None, size_fn, get_fn)
    assert out == b"\x00" and b" " == bytes([32])

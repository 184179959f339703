"""Every engine kernel, for every architecture: NVRTC compiles it, the SASS has the tensor-core
and async-copy instructions, no local-memory spills, registers and shared memory in budget."""
import pytest

from qcompile.backends.cuda import toolchain

if toolchain.problems():
    pytest.skip(f"CUDA pip packages missing: {toolchain.problems()}", allow_module_level=True)

from qcompile.backends.cuda import engine_kernels, nvrtc, sass  # noqa: E402


@pytest.fixture(scope="module", params=nvrtc.CUBIN_ARCHS)
def compiled(request, tmp_path_factory):
    return engine_kernels.compile_engine(request.param, tmp_path_factory.mktemp("nvrtc"))


@pytest.mark.parametrize("kernel", sorted(engine_kernels.KERNELS))
def test_kernel_meets_its_sass_budget(compiled, kernel):
    spec = engine_kernels.KERNELS[kernel]
    problems = sass.check_kernel(compiled, expect=spec.expect, max_registers=spec.max_registers,
                                 max_shared=spec.max_shared, function=spec.name)
    assert problems == [], f"{compiled.arch}: {problems}"
    resources = compiled.resources[spec.name]
    assert resources["spill_stores"] == 0 and resources["spill_loads"] == 0
    assert 0 < resources["registers"] <= spec.max_registers


def test_sass_really_lists_the_mma_loop(compiled):
    summary = sass.sass_summary(sass.sass_text(compiled.cubin))
    counts = summary[engine_kernels.GEMM_TILES["128x128"]]
    assert counts.get("IMMA", 0) >= 16        # 8 warps x (64x32 warp tile) per k-step


def test_ptx_for_forward_compatibility(tmp_path):
    ptx = engine_kernels.compile_engine_ptx(tmp_path)
    assert ".target sm_80" in ptx.ptx
    assert "mma.sync.aligned.m16n8k32" in ptx.ptx and ".local" not in ptx.ptx

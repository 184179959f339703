"""ISA detection and path choice for the TVM cpu-int8 kernels (no tvm needed)."""
from __future__ import annotations

import pytest

from qcompile.backends.tvm import cpu_features as cf

SPR = "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8\n"
HASWELL = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"


def feats(text, machine="x86_64"):
    return cf.CpuFeatures(machine, cf._read_flags(text))


def test_reads_flags_from_cpuinfo():
    f = feats(SPR)
    assert f.has("avx2", "avx512_vnni") and f.amx
    assert f.paths() == ["avx512-vnni", "avx2", "generic"]
    assert feats(HASWELL).paths() == ["avx2", "generic"]
    assert feats("").paths() == ["generic"]


def test_non_x86_machines_only_get_generic():
    assert feats(SPR, machine="aarch64").paths() == ["generic"]


def test_choose_best_or_forced_lower(monkeypatch):
    monkeypatch.delenv(cf.ENV_VAR, raising=False)
    assert cf.choose_path(features=feats(SPR)) == "avx512-vnni"
    assert cf.choose_path("avx2", features=feats(SPR)) == "avx2"
    assert cf.choose_path("generic", features=feats(SPR)) == "generic"
    assert cf.choose_path(features=feats(HASWELL)) == "avx2"
    monkeypatch.setenv(cf.ENV_VAR, "avx2")
    assert cf.choose_path(features=feats(SPR)) == "avx2"
    with pytest.raises(ValueError):
        cf.choose_path("avx1024", features=feats(SPR))


def test_forcing_a_path_the_cpu_lacks_raises():
    with pytest.raises(RuntimeError, match="avx512_vnni"):
        cf.require("avx512-vnni", feats(HASWELL))
    cf.require("generic", feats(""))


def test_detect_on_this_machine():
    f = cf.detect()
    assert "generic" in f.paths()
    assert cf.choose_path() in f.paths()


def test_llvm_target_is_explicit():
    pytest.importorskip("tvm")
    target = cf.llvm_target("avx512-vnni")
    assert str(target.attrs["mcpu"]) == "x86-64-v4"
    assert "+avx512vnni" in [str(a) for a in target.attrs["mattr"]]
    assert str(cf.llvm_target("avx2").attrs["mcpu"]) == "x86-64-v3"

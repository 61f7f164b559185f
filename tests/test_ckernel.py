"""The C kernels as C files: package data, the ctypes mirror of the header, the keyed and
verified cache, the build log, and the loud fallback when the build fails."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest

from policies import _ckernel


def header_fields() -> dict[str, list[str]]:
    """Field names of every ``typedef struct {...} lc_*_args;`` in the shipped header, in order."""
    text = resources.files("policies").joinpath("csrc", "liquid_cells.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = {}
    for body, name in re.findall(r"typedef struct \{(.*?)\}\s*(lc_\w+_args);", text, flags=re.S):
        names = []
        for decl in body.split(";"):
            decl = decl.strip()
            if not decl:
                continue
            _, rest = re.match(r"((?:const\s+)?(?:int64_t|double|void))\s*(.*)", decl).groups()
            names += [v.strip().lstrip("*").strip() for v in rest.split(",")]
        out[name] = names
    return out


def test_sources_are_package_data_and_the_ctypes_mirror_matches_the_header():
    base = resources.files("policies").joinpath("csrc")
    for name in _ckernel.SOURCES:
        assert base.joinpath(name).is_file(), name
    fields = header_fields()
    mirrors = {"lc_ltc_fwd_args": _ckernel.LTCFwdArgs, "lc_ltc_bwd_args": _ckernel.LTCBwdArgs,
               "lc_cfc_fwd_args": _ckernel.CfCFwdArgs, "lc_cfc_bwd_args": _ckernel.CfCBwdArgs}
    assert set(fields) == set(mirrors)
    for cname, cls in mirrors.items():
        assert [f[0] for f in cls._fields_] == fields[cname], cname
        assert ctypes.sizeof(cls) == 8 * len(fields[cname])  # only 8-byte fields: no padding
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert '"csrc/*.c"' in pyproject.read_text() and '"csrc/*.h"' in pyproject.read_text()


def test_loaded_library_passes_its_check():
    lib = _ckernel.lib()
    if lib is None:
        pytest.skip(f"no C kernels here: {_ckernel.status()}")
    key = lib.lc_build_key().decode()
    assert _ckernel._verify(lib, key) is None
    assert _ckernel._verify(lib, key + "x") is not None  # a wrong key is refused


def test_key_covers_sources_flags_and_compiler():
    src = _ckernel._read_sources()
    k = _ckernel.build_key(src, _ckernel.BASE_FLAGS, "cc", "gcc 12")
    assert k == _ckernel.build_key(dict(src), _ckernel.BASE_FLAGS, "cc", "gcc 12")
    assert k != _ckernel.build_key(src, (*_ckernel.BASE_FLAGS, "-march=native"), "cc", "gcc 12")
    assert k != _ckernel.build_key(src, _ckernel.BASE_FLAGS, "cc", "gcc 13")
    assert k != _ckernel.build_key(src, _ckernel.BASE_FLAGS, "clang", "gcc 12")
    edited = dict(src, **{"liquid_cells.c": src["liquid_cells.c"] + b"\n"})
    assert k != _ckernel.build_key(edited, _ckernel.BASE_FLAGS, "cc", "gcc 12")


RUN = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        from policies import _ckernel, LTC, Wiring
        import torch
        ok = _ckernel.lib() is not None
        m = LTC(Wiring.ncp(seed=0))
        y, _ = m(torch.randn(2, 3, 32))
    print(json.dumps({"ok": ok, "status": _ckernel.status(), "finite": bool(torch.isfinite(y).all()),
                      "warnings": [str(w.message) for w in caught
                                   if issubclass(w.category, _ckernel.CKernelWarning)]}))
""")


def run(env_extra: dict[str, str], cache: Path) -> dict:
    import json

    env = dict(os.environ, OMP_NUM_THREADS="1", LIQUID_DRIVE_CACHE=str(cache), **env_extra)
    env.pop("LIQUID_DRIVE_NO_CKERNEL", None)
    res = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_failed_build_warns_once_and_falls_back_and_foreign_files_are_not_trusted(tmp_path):
    """A compiler that fails: one one-line warning, the PyTorch path, the log kept. Garbage
    put under the cached names first is not loaded (the cache is keyed by hash and checked)."""
    src = _ckernel._read_sources()
    cc = "/bin/false"
    version = _ckernel._compiler_version(cc)
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    for flags in ((*_ckernel.BASE_FLAGS, "-march=native"), _ckernel.BASE_FLAGS):
        key = _ckernel.build_key(src, flags, cc, version)
        (kernels / f"liquid_cells_{key}.so").write_bytes(b"not a shared object")
    out = run({"CC": cc}, tmp_path)
    assert not out["ok"] and out["finite"]
    assert len(out["warnings"]) == 1
    msg = out["warnings"][0]
    assert "\n" not in msg and "PyTorch fallback" in msg and "tens of times slower" in msg
    logs = list(kernels.glob("liquid_cells_*.log"))
    assert logs and str(logs[0]) in msg
    assert "exit status 1" in logs[0].read_text()


@pytest.mark.slow  # one real compile (~10 s on a quiet core)
@pytest.mark.skipif(_ckernel._compiler() is None, reason="no C compiler on this machine")
def test_fresh_build_keeps_its_log_and_is_reused(tmp_path):
    first = run({}, tmp_path)
    assert first["ok"] and first["status"].startswith("built") and not first["warnings"]
    (log,) = (tmp_path / "kernels").glob("liquid_cells_*.log")
    text = log.read_text()
    assert "-O3" in text and "-Wall" in text and "exit status 0" in text
    assert "warning" not in text.lower()  # the sources compile cleanly under -Wall
    second = run({}, tmp_path)
    assert second["ok"] and second["status"].startswith("loaded")

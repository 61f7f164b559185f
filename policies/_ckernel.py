"""Optional C kernels for the LTC/CfC recurrences, compiled with the system C compiler at first use.

Why: the liquid cells are tiny (19 neurons, ~60 recurrent synapses) and run hundreds of
sequential steps, so eager PyTorch spends >95 % of its time in per-op overhead. One C call
per sequence (forward, and the hand-derived adjoint for backward) removes that overhead.

The sources are real C files shipped as package data (``policies/csrc/liquid_cells.c``,
``liquid_cells.h``, ``liquid_cells_impl.h``), read through `importlib.resources` and compiled
with ``cc -O3 -Wall -std=c99 -fPIC -shared -march=native`` (without ``-march=native`` if the
compiler refuses it) into the cache folder (``$LIQUID_DRIVE_CACHE`` or
``~/.cache/liquid-drive``, subfolder ``kernels``). The shared object is named by a hash of
the sources, the flags, the compiler and its version, and the CPU, and is checked at load
(ABI version, the size of every argument structure, the embedded build key), so a stale or
foreign file with a plausible name is rebuilt, never trusted. Each build's commands and
compiler output are kept beside it in ``liquid_cells_<key>.log``.

Every kernel takes one pointer to an argument structure (``lc_*_args`` in
``liquid_cells.h``), mirrored here by `ctypes.Structure` classes of the same field order.

No compiler, or a failed build: one loud one-line `CKernelWarning` and the cells use their
pure-PyTorch path (same function, tens of times slower; the tests compare both).
``LIQUID_DRIVE_NO_CKERNEL=1`` chooses that path without a warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from policies.atomicio import atomic_write_bytes, atomic_write_text

ABI_VERSION = 2  # LC_ABI_VERSION in liquid_cells.h
LANES = 16  # batch samples per vector block in the kernels (LC_LANES)
SOURCES = ("liquid_cells.h", "liquid_cells_impl.h", "liquid_cells.c")
BASE_FLAGS = ("-O3", "-Wall", "-std=c99", "-fPIC", "-shared")


class CKernelWarning(RuntimeWarning):
    """The C kernels could not be built or loaded; the (much slower) PyTorch path is used."""


# ---------------------------------------------------------------------- argument structures
_I, _P, _D = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double


def _fields(spec: str) -> list[tuple[str, Any]]:
    """``"i:B,T p:x d:dt_s"`` → ctypes fields (i = int64, p = pointer, d = double)."""
    kinds = {"i": _I, "p": _P, "d": _D}
    out: list[tuple[str, Any]] = []
    for group in spec.split():
        kind, names = group.split(":")
        out += [(n, kinds[kind]) for n in names.split(",")]
    return out


class LTCFwdArgs(ctypes.Structure):
    """Mirror of ``lc_ltc_fwd_args``."""

    _fields_ = _fields("i:B,T,F,N,Es,E,K p:x,dt d:dt_s p:v0,iw,ib,ssrc,sdst,ssig,sbz,swE,swp,"
                       "a0,d0,cmK,src,dst,sig,bz,wE,wp,out i:save p:SS,Vs,S,DEN i:M p:ow,ob,y "
                       "i:check,bad")


class LTCBwdArgs(ctypes.Structure):
    """Mirror of ``lc_ltc_bwd_args``."""

    _fields_ = _fields("i:B,T,F,N,Es,E,K p:x,dt d:dt_s p:iw,ib,ssrc,sdst,ssig,swE,swp,cmK,src,"
                       "dst,sig,wE,wp,SS,Vs,S,DEN,gV,gx,gdt,gv0,gP")


class CfCFwdArgs(ctypes.Structure):
    """Mirror of ``lc_cfc_fwd_args``."""

    _fields_ = _fields("i:T,B,N,H,mode,L p:off,size,PX,x,Wx,bias i:F p:h0,dts d:dt_s i:no "
                       "p:o_row,o_col,o_val,n_lo,n_hi,n_row,n_col,n_val,A,wt,perm_in,perm_out,Hs "
                       "i:save p:Z i:check,bad")


class CfCBwdArgs(ctypes.Structure):
    """Mirror of ``lc_cfc_bwd_args``."""

    _fields_ = _fields("i:T,B,N,H,mode,L p:off,size,h0,dts,Hs,Z i:no p:o_row,o_col,o_val,n_lo,"
                       "n_hi,n_row,n_col,n_val,A,wt,gHs,gPX,gh0,gdt,g_oval,g_nval,gA,gwt")


_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "ltc_fwd": LTCFwdArgs, "ltc_bwd": LTCBwdArgs, "cfc_fwd": CfCFwdArgs, "cfc_bwd": CfCBwdArgs,
}
_STRUCT_IDS = {"ltc_fwd": 0, "ltc_bwd": 1, "cfc_fwd": 2, "cfc_bwd": 3}


def make_args(kind: str, **values: Any) -> ctypes.Structure:
    """An argument structure for kernel `kind`; tensors become their data pointers."""
    cls = _STRUCTS[kind]
    conv = {k: (v.data_ptr() if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
    return cls(**conv)


# ---------------------------------------------------------------------- build and load
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_status = "not loaded yet"


def _read_sources() -> dict[str, bytes]:
    base = resources.files("policies").joinpath("csrc")
    return {name: base.joinpath(name).read_bytes() for name in SOURCES}


def _cpu_id() -> str:
    """CPU model and feature flags: a -march=native build must never run on another CPU."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part") and key not in found:
                    found[key] = line
    except OSError:
        pass
    return platform.machine() + platform.processor() + "".join(sorted(found.values()))


def cache_dir() -> Path:
    """Where the compiled kernels and their build logs live."""
    base = os.environ.get("LIQUID_DRIVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "liquid-drive")
    return Path(base) / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _compiler_version(cc: str) -> str:
    try:
        res = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return (res.stdout + res.stderr).strip()


def build_key(sources: dict[str, bytes], flags: tuple[str, ...], cc: str, cc_version: str) -> str:
    """Hash of everything that determines the shared object (sources, flags, compiler, CPU)."""
    h = hashlib.sha256()
    for part in (f"abi{ABI_VERSION}", sys.platform, _cpu_id(), cc, cc_version, " ".join(flags)):
        h.update(part.encode() + b"\0")
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name] + b"\0")
    return h.hexdigest()[:20]


def _verify(lib: ctypes.CDLL, key: str) -> str | None:
    """None if `lib` is the library built for `key` with our structure layout, else why not."""
    try:
        lib.lc_abi_version.restype = ctypes.c_int64
        lib.lc_struct_size.restype = ctypes.c_int64
        lib.lc_struct_size.argtypes = [ctypes.c_int64]
        lib.lc_build_key.restype = ctypes.c_char_p
        abi, got_key = int(lib.lc_abi_version()), lib.lc_build_key().decode()
        sizes = {k: int(lib.lc_struct_size(i)) for k, i in _STRUCT_IDS.items()}
    except AttributeError as exc:
        return f"missing symbol ({exc})"
    if abi != ABI_VERSION:
        return f"ABI {abi}, expected {ABI_VERSION}"
    if got_key != key:
        return f"build key {got_key!r}, expected {key!r}"
    for k, size in sizes.items():
        if size != ctypes.sizeof(_STRUCTS[k]):
            return f"sizeof {k} args is {size} in C but {ctypes.sizeof(_STRUCTS[k])} in Python"
    return None


def _compile(cc: str, flags: tuple[str, ...], key: str, sources: dict[str, bytes],
             out: Path, log: list[str]) -> bool:
    """Compile into `out` (atomically); append the commands and compiler output to `log`."""
    with tempfile.TemporaryDirectory(prefix="liquid_cells_") as tmp:
        for name, data in sources.items():
            Path(tmp, name).write_bytes(data)  # scratch files of the compiler, not outputs
        so_tmp = Path(tmp, "liquid_cells.so")
        cmd = [cc, *flags, f'-DLC_BUILD_KEY="{key}"', "-I", tmp, "-o", str(so_tmp),
               str(Path(tmp, "liquid_cells.c")), "-lm"]
        log.append("$ " + " ".join(cmd))
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            log.append(f"failed to run: {exc}")
            return False
        log.append((res.stdout + res.stderr).rstrip() or "(no compiler output)")
        log.append(f"exit status {res.returncode}")
        if res.returncode != 0 or not so_tmp.is_file():
            return False
        atomic_write_bytes(out, so_tmp.read_bytes())
    return True


def _load_or_build() -> tuple[ctypes.CDLL | None, str]:
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (install gcc or clang, or set CC)"
    sources = _read_sources()
    version = _compiler_version(cc)
    folder = cache_dir()
    native = (*BASE_FLAGS, "-march=native")  # vectorises the sigmoid loops; the key has the CPU
    attempts = [(native, build_key(sources, native, cc, version)),
                (BASE_FLAGS, build_key(sources, BASE_FLAGS, cc, version))]
    for _flags, key in attempts:  # a cached build, verified before use
        so = folder / f"liquid_cells_{key}.so"
        if so.is_file():
            try:
                lib = ctypes.CDLL(str(so))
            except OSError:
                lib = None
            if lib is not None and _verify(lib, key) is None:
                return lib, f"loaded {so}"
    folder.mkdir(parents=True, exist_ok=True)
    log: list[str] = [f"compiler: {cc}", version, ""]
    log_path = folder / f"liquid_cells_{attempts[0][1]}.log"
    problem = "the compiler failed"
    for flags, key in attempts:
        so = folder / f"liquid_cells_{key}.so"
        log_path = folder / f"liquid_cells_{key}.log"
        if _compile(cc, flags, key, sources, so, log):
            try:
                lib = ctypes.CDLL(str(so))
            except OSError as exc:
                log.append(f"cannot load {so}: {exc}")
                problem = f"the built library does not load ({exc})"
                continue
            why = _verify(lib, key)
            if why is None:
                atomic_write_text(log_path, "\n".join(log) + "\n")
                return lib, f"built {so}"
            log.append(f"rejected {so}: {why}")
            problem = f"the built library failed its check ({why})"
    atomic_write_text(log_path, "\n".join(log) + "\n")
    return None, f"{problem}; compiler output in {log_path}"


def lib() -> ctypes.CDLL | None:
    """The compiled kernels, or None (pure-PyTorch fallback, announced once by a warning)."""
    global _lib, _tried, _status
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("LIQUID_DRIVE_NO_CKERNEL", "") not in ("", "0"):
                _lib, _status = None, "disabled by LIQUID_DRIVE_NO_CKERNEL"
            else:
                try:
                    _lib, _status = _load_or_build()
                except OSError as exc:  # e.g. an unwritable cache folder
                    _lib, _status = None, f"{exc} (cache folder {cache_dir()}; set LIQUID_DRIVE_CACHE)"
                if _lib is None:
                    warnings.warn_explicit(
                        f"liquid-drive: the C kernels of the liquid cells are unavailable: {_status}. "
                        "Using the PyTorch fallback, tens of times slower "
                        "(LIQUID_DRIVE_NO_CKERNEL=1 selects it without this warning).",
                        CKernelWarning, filename="liquid-drive", lineno=0)
            _tried = True
    return _lib


def status() -> str:
    """How the kernels were obtained (loaded / built / why unavailable), for benchmarks and logs."""
    lib()
    return _status


def suffix(dtype: torch.dtype) -> str | None:
    """Kernel name suffix for a dtype, or None when there is no kernel for it."""
    return {torch.float32: "f32", torch.float64: "f64"}.get(dtype)


def lanes_for(batch: int) -> int:
    """Block width for a batch: vector blocks of LANES, or the scalar kernels for tiny batches."""
    return LANES if batch >= 8 else 1


_funcs: dict[str, Any] = {}


def func(name: str, dtype: torch.dtype, lanes: int = LANES):  # noqa: ANN201 - ctypes function
    """ctypes function ``lc_<name>_<suffix>`` (block width `lanes`: LANES or 1), or None.

    Call it with ``ctypes.byref(args)``, ``args`` from `make_args(name, ...)`.
    """
    L = lib()
    suf = suffix(dtype)
    if L is None or suf is None:
        return None
    key = f"lc_{name}_{suf}" + ("" if lanes == LANES else "_l1")
    f = _funcs.get(key)
    if f is None:
        f = getattr(L, key)
        f.restype = None
        f.argtypes = [ctypes.POINTER(_STRUCTS[name])]
        _funcs[key] = f
    return f

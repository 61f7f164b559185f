"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A RUN directory holds

- ``model.safetensors``: the policy's ``state_dict``;
- ``config.json``: the caller's config (training settings, dataset fingerprint, ...) plus
  what is needed to rebuild the policy from the directory alone: ``policy`` (factory name),
  ``image_hw``, ``policy_spec`` (factory keyword arguments, the wiring written out),
  ``tensors`` (name → shape, dtype), ``files`` (name → SHA-256), ``package_version``;

Resumable training state (optimizer moments, RNG, counters) is not part of a checkpoint: it
has one format of its own, `policies.training_state` (``RUN/last/state.safetensors``).

Every file is written to a temporary name, fsynced and moved into place with ``os.replace``;
``config.json`` goes last and records the SHA-256 of the other files, so a save interrupted
between two renames is detected on load instead of silently mixing two epochs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickletools
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from policies.atomicio import (
    PICKLE_SUFFIXES,
    atomic_write_bytes,
    fsync_dir,
    looks_pickled,
    temp_path,
)
from policies.factory import POLICY_NAMES, rebuild
from policies.policy import Policy

FORMAT = "liquid-drive-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Files of the training-state API that earlier versions kept inside a checkpoint.
_OLD_FILES = ("optimizer.safetensors", "optimizer.json", "extra.safetensors")
# Keys of config.json that save_checkpoint owns (derived from the policy).
RESERVED_KEYS = ("policy", "image_hw", "policy_spec", "parameters", "parameter_breakdown",
                 "core", "tensors", "files", "package_version", "format", "format_version")

_CONVERT_HINT = (
    "pickled checkpoints are not loaded for safety; convert with, in a Python session you "
    "trust: `from policies import build_policy, save_checkpoint; p = build_policy(NAME); "
    "p.load_state_dict(torch.load(PATH, weights_only=True)); save_checkpoint(RUN_DIR, p, {})` "
    "(unpickling an untrusted file can run arbitrary code)"
)


def package_version() -> str:
    """The installed liquid-drive version (recorded in config.json), without importing `driving`.

    `policies` is the lowest layer (docs/architecture.md): it must not import `driving`. A
    source checkout that is not installed reads the version from its pyproject.toml.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("liquid-drive")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            text = pyproject.read_text(encoding="utf-8")
        except OSError:
            return "unknown"
        m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return m.group(1) if m else "unknown"


# ---------------------------------------------------------------------- file helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stage(run_dir: Path, name: str, data: bytes) -> Path:
    """Write `data` to a fresh temp name beside `name` (fsynced, mode 0644 under the usual
    umask, removed again on any error) and return it; the caller renames it into place."""
    return atomic_write_bytes(temp_path(run_dir / name), data)


def _write_tensors(run_dir: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    # clone: safetensors refuses tensors that share storage, and wants contiguous CPU data
    data = save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
                metadata={"format": FORMAT})
    return _stage(run_dir, name, data)


def _dumps(obj: Any, level: int = 0) -> str:
    """JSON indented like ``indent=2``, but with lists of numbers/strings on one line, so a
    wiring's adjacency rows read as a matrix instead of a thousand one-number lines."""
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)) and obj:
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return json.dumps(list(obj))
        return "[\n" + ",\n".join(inner + _dumps(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def _write_json(run_dir: Path, name: str, obj: Any) -> Path:
    return _stage(run_dir, name, (_dumps(obj) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------- save
def _core_summary(policy: Policy) -> dict[str, Any]:
    core = policy.core
    out: dict[str, Any] = {"type": "none" if core is None else type(core).__name__,
                           "state_size": policy.state_size, "uses_time": policy.uses_time,
                           "time_unit_s": policy.time_unit_s}
    wiring = getattr(core, "wiring", None)
    if wiring is not None:
        out.update(units=wiring.units, synapses=wiring.synapse_count,
                   sensory_synapses=wiring.sensory_synapse_count, wiring_kind=wiring.kind)
    return out


def save_checkpoint(
    run_dir: str | os.PathLike,
    policy: Policy,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write the policy (weights + config) to `run_dir` atomically; returns the directory.

    Training state (optimizer moments, RNG, counters) is not part of a checkpoint: it has
    its own format in `policies.training_state` (RUN/last/state.safetensors).
    """
    for attr in ("module", "_orig_mod"):  # DistributedDataParallel / torch.compile wrappers
        inner = getattr(policy, attr, None)
        if not isinstance(policy, Policy) and isinstance(inner, Policy):
            policy = inner
    if not isinstance(policy, Policy):
        raise ValueError(f"save_checkpoint needs a policies.Policy, got {type(policy).__name__}")
    config = dict(config or {})
    spec = policy.spec
    for key, value in (("policy", policy.name), ("image_hw", list(policy.image_hw))):
        if key in config and _jsonable(config[key]) != value:
            raise ValueError(f"config[{key!r}]={config[key]!r} disagrees with the policy ({value!r})")
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ValueError(f"{run} exists and is not a directory; give a RUN directory to save into")
    run.mkdir(parents=True, exist_ok=True)

    for name in (MODEL_FILE, CONFIG_FILE, *_OLD_FILES):
        for pattern in (f".{name}.*.tmp", f"..{name}.*.tmp"):  # left by a killed save
            for stale in run.glob(pattern):
                stale.unlink(missing_ok=True)
    state = policy.state_dict()
    staged: dict[str, Path] = {}
    try:
        staged[MODEL_FILE] = _write_tensors(run, MODEL_FILE, state)
        full = dict(config)
        full.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            package_version=package_version(),
            policy=policy.name,
            image_hw=list(policy.image_hw),
            policy_spec=spec,
            parameters=policy.parameter_count(),
            parameter_breakdown=policy.parameter_breakdown(),
            core=_core_summary(policy),
            tensors={k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                     for k, v in state.items()},
            files={name: _sha256(tmp) for name, tmp in staged.items()},
        )
        try:
            json.dumps(full)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config must be JSON-serialisable: {exc}") from None
        staged_config = _write_json(run, CONFIG_FILE, full)
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    for name, tmp in staged.items():
        os.replace(tmp, run / name)
    os.replace(staged_config, run / CONFIG_FILE)  # last: it vouches for the files above
    for name in _OLD_FILES:  # written by saves of an earlier version; the config no longer vouches
        (run / name).unlink(missing_ok=True)
    fsync_dir(run)
    return run


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x)) if isinstance(x, (tuple, list)) else x


# ---------------------------------------------------------------------- load
def _parses_as_pickle(path: Path, limit: int = 1 << 16) -> bool:
    """True when the file's first bytes are a stream of pickle opcodes (any protocol, 0 and 1
    included, which have no magic number). Only parses opcodes (`pickletools.genops`): nothing
    is unpickled, no code runs."""
    try:
        with open(path, "rb") as f:
            head = f.read(limit)
    except OSError:
        return False
    ops = 0
    try:
        for op, _, _ in pickletools.genops(io.BytesIO(head)):
            ops += 1
            if op.name == "STOP" or ops >= 8:
                return True
    except ValueError:  # not an opcode, or the stream ends mid-way (a long pickle cut at limit)
        return ops >= 8 or (ops >= 2 and len(head) == limit)
    return False


def _pickled(path: Path) -> bool:
    return looks_pickled(path) or _parses_as_pickle(path)


PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "assets" / "pretrained"
PRETRAINED_PREFIX = "pretrained:"


def pretrained_names() -> list[str]:
    """Names of the agents shipped in `assets/pretrained/` (usable as `pretrained:NAME`)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def resolve_run_dir(run_dir: str | os.PathLike) -> Path:
    """The RUN directory for `run_dir` (a file inside it is accepted), or a clear ValueError.

    `pretrained:NAME` names an agent shipped with the package (`assets/pretrained/NAME`).
    """
    text = os.fspath(run_dir)
    if text.startswith(PRETRAINED_PREFIX):
        name = text[len(PRETRAINED_PREFIX):]
        if name not in pretrained_names():
            raise ValueError(f"no pretrained agent {name!r}; shipped: "
                             f"{', '.join(pretrained_names()) or 'none'} (in {PRETRAINED_DIR})")
        run_dir = PRETRAINED_DIR / name
    path = Path(run_dir)
    if not path.exists():
        raise ValueError(f"checkpoint directory {path} does not exist")
    if path.is_file():
        if path.name in (MODEL_FILE, CONFIG_FILE):  # (a pickle under this name: _load_tensors)
            path = path.parent
        elif _pickled(path):
            raise ValueError(f"{path} holds pickled data: {_CONVERT_HINT}")
        else:
            raise ValueError(f"{path} is a file, not a checkpoint directory (RUN/ with "
                             f"{MODEL_FILE} and {CONFIG_FILE})")
    missing = [n for n in (MODEL_FILE, CONFIG_FILE) if not (path / n).is_file()]
    if missing:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(f"{path} holds {', '.join(pickles)} but no {MODEL_FILE}: {_CONVERT_HINT}")
        raise ValueError(f"{path} is not a checkpoint: missing {', '.join(missing)} "
                         f"(written by `driving train` / policies.save_checkpoint)")
    return path


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint, validated (without loading any tensors)."""
    path = resolve_run_dir(run_dir)
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path / CONFIG_FILE} is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path / CONFIG_FILE} must hold a JSON object")
    if config.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE} is not a liquid-drive checkpoint config "
                         f"(format={config.get('format')!r}, expected {FORMAT!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {config['format_version']} is newer than "
                         f"this liquid-drive understands ({FORMAT_VERSION}); upgrade the package")
    for key in ("policy", "image_hw", "policy_spec", "tensors", "files"):
        if key not in config:
            raise ValueError(f"{path / CONFIG_FILE} lacks the key {key!r}")
    if config["policy"] not in POLICY_NAMES:
        raise ValueError(f"{path}: unknown policy {config['policy']!r}; valid names: "
                         f"{', '.join(POLICY_NAMES)}")
    return config


def _check_file(path: Path, name: str, config: dict[str, Any]) -> None:
    expected = config["files"].get(name)
    if expected is None:
        raise ValueError(f"{path / CONFIG_FILE} does not list {name}")
    if not (path / name).is_file():
        raise ValueError(f"{path} is missing {name} that its config lists")
    if _sha256(path / name) != expected:
        if _pickled(path / name):
            raise ValueError(f"{path / name} holds pickled data, not safetensors: {_CONVERT_HINT}")
        raise ValueError(f"{path / name} does not match {CONFIG_FILE} (SHA-256 differs): the "
                         "checkpoint is torn (a save was interrupted) or was edited")


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a pickle is named as such, never loaded.

    Parsing a safetensors header is safe whatever the bytes are, so the file is parsed first
    and only a failure is examined (a valid safetensors file can start with the byte 0x80 of
    a pickle's magic number: its header length is little-endian)."""
    if file.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{file} holds pickled data, not safetensors: {_CONVERT_HINT}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        if _pickled(file):
            raise ValueError(f"{file} holds pickled data, not safetensors: {_CONVERT_HINT}") from None
        raise ValueError(f"{file} is not a valid safetensors file: {exc}") from None


def load_policy(run_dir: str | os.PathLike) -> tuple[Policy, dict[str, Any]]:
    """Rebuild the policy of a RUN directory (architecture from config.json, weights from
    model.safetensors), in eval mode, on the CPU. Returns ``(policy, config)``."""
    path = resolve_run_dir(run_dir)
    config = read_config(path)
    _check_file(path, MODEL_FILE, config)
    tensors = _load_tensors(path / MODEL_FILE)
    recorded = {k: (list(v["shape"]), v["dtype"]) for k, v in config["tensors"].items()}
    actual = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in tensors.items()}
    if recorded != actual:
        raise ValueError(f"{path}: tensors in {MODEL_FILE} do not match {CONFIG_FILE}: "
                         + _diff(recorded, actual, "config", "file"))
    try:
        policy = rebuild(config["policy_spec"])
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: cannot rebuild policy {config['policy']!r} from its config: "
                         f"{exc}") from None
    if policy.name != config["policy"]:
        raise ValueError(f"{path}: config says policy {config['policy']!r} but its spec builds "
                         f"{policy.name!r}")
    wanted = {k: (list(v.shape), str(v.dtype).replace("torch.", ""))
              for k, v in policy.state_dict().items()}
    if wanted != actual:
        raise ValueError(f"{path}: tensors do not match the {config['policy']} architecture in "
                         "its config: " + _diff(wanted, actual, "architecture", "file"))
    policy.load_state_dict(tensors, strict=True)
    policy.eval()
    return policy, config


def _diff(a: dict[str, Any], b: dict[str, Any], an: str, bn: str) -> str:
    parts = []
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a:
        parts.append(f"missing from {bn}: {only_a[:5]}{' ...' if len(only_a) > 5 else ''}")
    if only_b:
        parts.append(f"unexpected in {bn}: {only_b[:5]}{' ...' if len(only_b) > 5 else ''}")
    bad = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    if bad:
        parts.append("shape/dtype differs for " + ", ".join(
            f"{k} ({an} {a[k][0]} {a[k][1]}, {bn} {b[k][0]} {b[k][1]})" for k in bad[:5]))
    return "; ".join(parts)

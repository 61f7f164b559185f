"""Every `--out` checked before any work starts, and a full disk reported in one line.

Why one module: each verb used to find out that its `--out` was unusable only when it
wrote, which for `eval` is after driving every episode and for `train` after the CNN
warm-up, and then as a traceback. The checks here are cheap (a few `stat` calls) and run
first, so a command refuses a bad `--out` in milliseconds with a message that names the
path, the problem and the fix:

- a path under a file (``notes.txt/run``): nothing can be created there;
- a folder output onto an existing file, or a file output onto an existing folder;
- a folder that already holds another kind of output (an eval report written into a
  training run or a dataset, a dataset recorded into an eval report, ...);
- an earlier output of the same kind, which is only replaced with ``--force``
  (`eval`, `explain`, `export`), extended (`collect`) or regenerated (`compare`, `preview`);
- a folder that cannot be written (read-only filesystem, permissions).

A full disk (ENOSPC) or quota (EDQUOT) while writing becomes a `UserError` via
`writing(...)`; `driving.cli` also catches any that escape, so no verb ends in a traceback
for it. The writers themselves (`policies.atomicio`) leave no partial file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from driving.errors import UserError

#: Output kinds a folder can hold: kind -> (what it is called in messages, marker entries).
#: The first kind whose marker exists names the folder's contents.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "demo": ("a `driving demo` output", ("demo_summary.json",)),
    "run": ("a training run", ("model.safetensors", "last", "metrics.csv")),
    "dataset": ("a liquid-drive dataset", ("zarr.json", "index.json", "episodes")),
    "report": ("an evaluation report", ("report.json", "summary.json")),
    "compare": ("a comparison of reports", ("compare.json",)),
}

#: errno values that mean "no room left": a full filesystem or an exhausted quota.
DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
_NO_ACCESS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# Temp names of the atomic writers: atomicio's `.NAME.<hex>.tmp`, mkstemp's `.NAME.<rand>.tmp`.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def detect_kind(folder: str | os.PathLike) -> tuple[str, str] | None:
    """(kind, marker) of what ``folder`` holds, or None for an empty or unknown folder."""
    d = Path(folder)
    for kind, (_, markers) in KINDS.items():
        for m in markers:
            if (d / m).exists():
                return kind, m
    return None


def _given(path: str | os.PathLike, flag: str, what: str) -> tuple[Path, str]:
    """(Path, the text as given); an empty value or a broken link is refused here."""
    shown = os.fspath(path)
    if not str(shown).strip():
        raise UserError(f"{flag} is empty; give a {what}")
    p = Path(shown)
    if p.is_symlink() and not p.exists():
        raise UserError(f"{flag} {shown} is a broken symbolic link (to {os.readlink(p)}); "
                        "remove it or choose another path")
    return p, shown


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, flag: str, shown: str, make_parents: bool) -> None:
    """Refuse a path under a file, under a missing folder (unless created) or unwritable."""
    folder = path.parent
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise UserError(f"{flag} {shown}: {base} is a file, so nothing can be created under it; "
                        "choose a path in a folder")
    if base != folder and not make_parents:
        raise UserError(f"{flag} {shown}: folder {str(folder)!r} does not exist; create it first")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {shown}: folder {str(base)!r} is not writable; "
                        "choose another place (or fix its permissions)")


def check_out_dir(path: str | os.PathLike, kind: str, *, force: bool = False,
                  existing: str = "refuse", flag: str = "--out") -> Path:
    """Refuse a `--out` folder that cannot receive a ``kind`` output, before any work.

    ``existing`` says what to do when the folder already holds an output of the same kind:
    ``"refuse"`` (unless ``force``), ``"overwrite"`` (regenerated outputs) or ``"append"``
    (a dataset that is extended or resumed). Another kind of output is always refused.
    Missing parent folders are created later by the writer, so they are fine here.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; one of {', '.join(KINDS)}")
    if existing not in ("refuse", "overwrite", "append"):
        raise ValueError(f"existing must be refuse, overwrite or append, got {existing!r}")
    p, shown = _given(path, flag, "folder")
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise UserError(f"{flag} {shown} is a file, not a folder; choose a new folder name "
                            "(or move the file away)")
        found = detect_kind(p)
        what = KINDS[kind][0]
        if found is not None and found[0] != kind:
            raise UserError(f"{flag} {shown} holds {KINDS[found[0]][0]} ({found[1]}), not "
                            f"{what}; choose another folder")
        if found is not None and existing == "refuse" and not force:
            raise UserError(f"{flag} {shown} already holds {what} ({found[1]}); pass --force to "
                            "overwrite it, or choose another folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {shown}: folder is not writable; choose another place "
                            "(or fix its permissions)")
        return p
    _check_creatable(p, flag, shown, make_parents=True)
    return p


def check_out_file(path: str | os.PathLike, *, suffixes: Sequence[str] = (), force: bool = False,
                   overwrite_if: bytes | None = None, make_parents: bool = False,
                   flag: str = "--out") -> Path:
    """Refuse a `--out` file that cannot be written, before any work.

    An existing file is replaced only with ``force``, or, for regenerated outputs, when it
    starts with the magic bytes ``overwrite_if`` (so a preview replaces an older preview PNG
    but never some other file). ``make_parents``: missing folders are created by the writer.
    """
    p, shown = _given(path, flag, "file name")
    if suffixes and p.suffix.lower() not in suffixes:
        raise UserError(f"{flag} must name a {' or '.join(suffixes)} file, got {shown!r}")
    if p.is_dir():
        raise UserError(f"{flag} {shown!r} is a folder; give a file name")
    if p.exists() or p.is_symlink():
        if not force:
            same = False
            if overwrite_if is not None:
                with contextlib.suppress(OSError):
                    with open(p, "rb") as f:
                        same = f.read(len(overwrite_if)) == overwrite_if
            if not same:
                hint = "pass --force to overwrite it" if overwrite_if is None else (
                    "it is not an earlier output of this command; move it away")
                raise UserError(f"{flag} {shown} exists; {hint}, or choose another name")
    _check_creatable(p, flag, shown, make_parents=make_parents)
    return p


def _shown_path(exc: OSError, fallback: str | os.PathLike | None) -> str:
    name = exc.filename if exc.filename is not None else fallback
    if name is None:
        return "the output"
    p = Path(os.fsdecode(name))
    m = _TEMP_NAME.match(p.name)
    return os.fspath(p.with_name(m["name"]) if m else p)


def _is_under(name: str | bytes | None, path: str | os.PathLike) -> bool:
    """True when ``name`` (an OSError's filename; None: unknown) lies in or at ``path``."""
    if name is None:
        return True
    try:
        target = Path(os.fsdecode(name)).resolve()
        root = Path(path).resolve()
    except (OSError, RuntimeError):
        return False
    if target == root or root in target.parents:
        return True
    m = _TEMP_NAME.match(target.name)  # the atomic writer's temp file beside a file output
    return target.parent == root.parent and m is not None and m["name"] == root.name


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError that means the filesystem or the quota is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def disk_full_message(exc: OSError, path: str | os.PathLike | None = None,
                      rerun: str = "rerun") -> str:
    """One line for a full disk: what was being written and what to do."""
    why = "disk quota exceeded" if exc.errno != errno.ENOSPC else "no space left on device"
    return (f"{why} while writing {_shown_path(exc, path)} (not written, no partial file left); "
            f"free some space (or choose --out on another disk) and {rerun}")


@contextlib.contextmanager
def writing(path: str | os.PathLike, rerun: str = "rerun") -> Iterator[None]:
    """Turn a full disk or a refused write under ``path`` into a one-line `UserError`.

    ``rerun`` ends the advice, e.g. "rerun with --force" where the files written before
    the disk filled up would otherwise make the rerun refuse the folder.
    """
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise UserError(disk_full_message(exc, path, rerun)) from None
        if exc.errno in _NO_ACCESS and _is_under(exc.filename, path):
            reason = (exc.strerror or "cannot write").lower()
            raise UserError(f"{reason}: {_shown_path(exc, path)}; choose another --out "
                            "(or fix its permissions)") from None
        raise


__all__ = ["DISK_FULL", "KINDS", "check_out_dir", "check_out_file", "detect_kind",
           "disk_full_message", "is_disk_full", "writing"]

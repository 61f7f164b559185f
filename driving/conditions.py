"""Corruption conditions, first class: one parser for eval, explain and the paper sweep.

A condition is a corruption name and a severity (0 = clean, 1-5 graded; docs/evaluation.md
documents each). Text forms accepted by `parse_conditions`:

    none              the clean condition (severity 0)
    fog:3             one severity
    noise:3-5         a range of severities (3, 4, 5)
    rain:2,4          not valid inside one item: write rain:2,rain:4
    fog               every severity of `default_severities` (the CLI's --severities)
    all               every corruption (and none) at `default_severities`

Items are comma separated; repeats are dropped, order is kept. ``none`` always comes first
when present, so reports list the clean row first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from driving import corruptions as C


@dataclass(frozen=True, order=True)
class Condition:
    """One (corruption, severity) pair; ``none`` has severity 0."""

    corruption: str
    severity: int

    def __post_init__(self) -> None:
        if self.corruption not in C.all_names():
            raise ValueError(f"unknown corruption {self.corruption!r}; choose from {', '.join(C.all_names())}")
        if isinstance(self.severity, bool) or not isinstance(self.severity, int):
            raise ValueError(f"severity of {self.corruption} must be an integer 0-{C.MAX_SEVERITY}, got {self.severity!r}")
        if not 0 <= self.severity <= C.MAX_SEVERITY:
            raise ValueError(f"severity {self.severity} of {self.corruption} is out of range 0-{C.MAX_SEVERITY}")
        if self.corruption == "none" and self.severity != 0:
            raise ValueError(f"'none' is the clean condition and has severity 0, got {self.severity}")

    @property
    def is_clean(self) -> bool:
        return self.corruption == "none" or self.severity == 0

    @property
    def is_timing(self) -> bool:
        return self.corruption in C.TIMING_FAULTS

    @property
    def is_image(self) -> bool:
        return self.corruption in C.CORRUPTIONS

    def label(self) -> str:
        """``none`` or ``NAME:SEVERITY`` (what `parse_conditions` reads back)."""
        return "none" if self.corruption == "none" else f"{self.corruption}:{self.severity}"

    def slug(self) -> str:
        """A file-name-safe form, e.g. ``fog-3``."""
        return "none" if self.corruption == "none" else f"{self.corruption}-{self.severity}"


CLEAN = Condition("none", 0)


def _severities(text: str, item: str) -> list[int]:
    lo, sep, hi = text.partition("-")
    try:
        a = int(lo)
        b = int(hi) if sep else a
    except ValueError:
        raise ValueError(f"severity {text!r} in {item!r} is not an integer or a range; "
                         f"write NAME:S or NAME:A-B with S, A, B in 0-{C.MAX_SEVERITY} (e.g. noise:3-5)") from None
    if a > b:
        raise ValueError(f"severity range {text!r} in {item!r} runs backwards; write {b}-{a}")
    return list(range(a, b + 1))


def parse_conditions(text: str, default_severities: Sequence[int] = (1, 2, 3, 4, 5)) -> list[Condition]:
    """Parse ``"none,fog:3,noise:3-5,rain"`` into conditions (see the module docstring).

    Raises ValueError naming the bad item and the valid forms.
    """
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError("no condition given; e.g. none,fog:3,noise:3-5")
    out: list[Condition] = []

    def add(c: Condition) -> None:
        if c not in out:
            out.append(c)

    for item in items:
        name, sep, sev = item.partition(":")
        name = name.strip()
        if name == "clean":
            name = "none"
        if name == "all":
            if sep:
                raise ValueError(f"'all' takes no severity (got {item!r}); it uses the default severities")
            names = C.all_names()
        else:
            if name not in C.all_names():
                raise ValueError(f"unknown corruption {name!r} in {item!r}; choose from "
                                 f"{', '.join(C.all_names())}, or all")
            names = [name]
        for n in names:
            if n == "none":
                if sep and _severities(sev, item) != [0]:
                    raise ValueError(f"'none' is the clean condition and takes no severity (got {item!r})")
                add(CLEAN)
                continue
            levels = _severities(sev, item) if sep else list(default_severities)
            for s in levels:
                if s == 0:
                    add(CLEAN)  # severity 0 of anything is the clean condition
                else:
                    add(Condition(n, s))
    return ordered(out)


def from_names(names: Iterable[str], severities: Sequence[int]) -> list[Condition]:
    """The cross product the CLI's ``--corruptions A,B --severities 1,2`` means: ``none`` once
    at 0, every other corruption at every severity > 0 (a severity 0 adds the clean row)."""
    out: list[Condition] = []
    for name in names:
        if name == "none":
            if CLEAN not in out:
                out.append(CLEAN)
            continue
        for s in severities:
            c = CLEAN if s == 0 else Condition(name, int(s))
            if c not in out:
                out.append(c)
    return ordered(out)


def ordered(conds: Iterable[Condition]) -> list[Condition]:
    """Clean first, the rest in the order given."""
    conds = list(dict.fromkeys(conds))
    return [c for c in conds if c == CLEAN] + [c for c in conds if c != CLEAN]


def format_conditions(conds: Iterable[Condition]) -> str:
    """The text form (`parse_conditions` reads it back to the same list)."""
    return ",".join(c.label() for c in conds)


def parse_image_condition(text: str | None) -> Condition:
    """One image corruption for explanations: ``fog:3``; None/``none`` → clean.

    Timing faults leave the pixels unchanged (no saliency effect); they are refused with a
    pointer to `driving eval`.
    """
    if text is None or str(text).strip() in ("", "none", "none:0", "clean"):
        return CLEAN
    item = str(text).strip()
    name, sep, _ = item.partition(":")
    if name in C.TIMING_FAULTS:
        raise ValueError(f"corruption {name!r} is a timing fault and leaves the pixels unchanged; "
                         f"explain supports image corruptions: {', '.join(C.CORRUPTIONS)}")
    if name in C.CORRUPTIONS and not sep:
        raise ValueError(f"corruption {item!r} has no severity; write it as {name}:SEVERITY with "
                         f"SEVERITY 1-{C.MAX_SEVERITY} (e.g. {name}:3)")
    if name in C.CORRUPTIONS and _severities(item.partition(":")[2], item) == [0]:
        return Condition(name, 0)  # the corruption at severity 0: its frames are the clean ones
    conds = parse_conditions(item)
    if len(conds) != 1:
        raise ValueError(f"give one condition such as fog:3, got {item!r}")
    return conds[0]


__all__ = ["CLEAN", "Condition", "format_conditions", "from_names", "ordered", "parse_conditions",
           "parse_image_condition"]

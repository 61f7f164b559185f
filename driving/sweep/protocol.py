"""What a sweep computes: the protocol, its work list, and where every result lives.

Layout under OUT (one place; the driver writes everything, tasks only return results):

    OUT/protocol.json                      the protocol's fingerprint (resumes must match)
    OUT/data/                              the shared recorded dataset (or --data)
    OUT/runs/POLICY-sSEED/                 checkpoint (model.safetensors, config.json, DONE)
    OUT/cells/POLICY-sSEED/COND/roadR.json one evaluation cell (run, condition, road)
    OUT/calibration/POLICY-sSEED.json      EMA time constant of a smoothing control
    OUT/passive_data/                      the recorded held-out test drives (passive test)
    OUT/passive/POLICY-sSEED.json          one run's passive test (offline table, attention SSIM)
    OUT/timings/                           seconds per task, sessions (wall time, tasks)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from driving.errors import UserError

#: Conditions of protocol v2 (issue 16): clean, the paper's noise levels (severities 3/4/5 =
#: σ² 0.1/0.2/0.3), six appearance corruptions at severity 3, two timing faults at 2 and 4.
V2_CONDITIONS = ("none", "noise:3", "noise:4", "noise:5", "fog:3", "rain:3", "snow:3", "night:3",
                 "motion_blur:3", "glare:3", "dropped_frames:2", "dropped_frames:4", "jitter:2",
                 "jitter:4")
#: Controls that reuse a trained run's weights: the smoothing controls filter the same
#: network's steering (so the filter is the only difference); the time-blind LTC is the same
#: NCP-LTC given a nominal Δt (trained on nominal-Δt recordings the two are identical).
DERIVED = {"cnn-ema": "cnn", "lstm-ema": "lstm", "ncp-ltc-timeblind": "ncp-ltc"}
#: The policy whose clean steering rate the smoothing controls are matched to.
EMA_TARGET = "ncp-ltc"
REFERENCES = ("ncp-ltc", "ncp-cfc")


def all_policies() -> tuple[str, ...]:
    from policies.factory import POLICY_NAMES

    return tuple(POLICY_NAMES)


@dataclass(frozen=True)
class Protocol:
    """Every knob that decides the numbers (policies and seeds only choose a subset)."""

    name: str = "v2"
    policies: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    env: str = "liquid_drive/RandomRoad-v0"
    train_split: str = "train"
    test_split: str = "test"
    data_seed: int = 0
    episodes: int = 64
    steps: int = 450
    dart_noise: float = 0.15
    epochs: int = 6
    max_frames: int = 3000
    val_fraction: float = 0.125
    train_extra: tuple[str, ...] = ("--lr", "0.001")
    roads: int = 10
    road_seed: int = 5000  # road r of the test split is evaluation seed road_seed + r
    eval_steps: int = 450  # 45 s at 10 Hz
    conditions: tuple[str, ...] = V2_CONDITIONS
    intervention: str = "strict"
    calibration_episodes: int = 4
    n_boot: int = 4000
    extra: dict[str, Any] = field(default_factory=dict)
    # the passive (offline) test of every run on recorded held-out drives (`PASSIVE_KNOBS`)
    passive_episodes: int = 8
    passive_steps: int = 300
    passive_seed: int = 6000  # test drive k is recorded with env seed passive_seed + k
    ssim_frames: int = 16

    def __post_init__(self) -> None:
        if not self.policies:
            object.__setattr__(self, "policies", all_policies())

    def fingerprint(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("policies", "seeds", "extra", "n_boot", "name"):
            d.pop(k)
        # The passive knobs came after sweeps were started (OUT/protocol.json holds the
        # fingerprint without them, and resuming compares fingerprints). They decide no
        # training and no evaluation cell, so at the named protocol's own values they are
        # left out and an existing OUT stays resumable; any other value joins the
        # fingerprint, so an OUT never mixes passive settings. Each passive result also
        # stores its settings (`passive_settings`) and the report uses only matching ones.
        defaults = passive_defaults(self.name)
        for k in PASSIVE_KNOBS:
            if d[k] == defaults[k]:
                d.pop(k)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def fingerprint_id(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:12]

    def validate(self) -> None:
        from driving.corruptions import all_names

        names = all_policies()
        bad = [p for p in self.policies if p not in names]
        if bad:
            raise UserError(f"unknown policy {bad[0]!r} in --policies; choose from {', '.join(names)}")
        if not self.seeds:
            raise UserError("--seeds must name at least one training seed, e.g. 0,1,2,3,4")
        for k in ("episodes", "steps", "epochs", "roads", "eval_steps", "passive_episodes",
                  "passive_steps"):
            if int(getattr(self, k)) < 1:
                raise UserError(f"{k} must be >= 1, got {getattr(self, k)}")
        for c in self.conditions:
            name, _, sev = c.partition(":")
            if c == "none":
                continue
            if name not in all_names() or name == "none" or not sev.isdigit() or not 1 <= int(sev) <= 5:
                raise UserError(f"condition {c!r} must be 'none' or NAME:SEVERITY with severity 1..5, "
                                f"NAME one of {', '.join(all_names())}")
        if "none" not in self.conditions:
            raise UserError("the conditions must include 'none' (clean): mRR and the timing table "
                            "divide by it")
        if self.intervention not in ("strict", "lenient"):
            raise UserError(f"intervention rule {self.intervention!r}: choose strict or lenient")
        if int(self.ssim_frames) < 0:
            raise UserError(f"ssim_frames must be >= 0, got {self.ssim_frames}")


SMOKE = dict(name="smoke", policies=("ncp-ltc", "cnn", "cnn-ema", "ncp-ltc-timeblind"),
             seeds=(0, 1), episodes=2, steps=20, epochs=1, max_frames=16, val_fraction=0.5,
             train_extra=("--cnn-warmup-steps", "2"), roads=2, eval_steps=8,
             conditions=("none", "noise:3", "dropped_frames:2"), calibration_episodes=1,
             n_boot=200, passive_episodes=2, passive_steps=12, ssim_frames=2)
#: The passive test's knobs (fingerprinted only where they differ from the named protocol's).
PASSIVE_KNOBS = ("passive_episodes", "passive_steps", "passive_seed", "ssim_frames")


def passive_defaults(name: str) -> dict[str, Any]:
    """The passive knobs' values of protocol ``name`` (the dataclass defaults for v2 and
    any unnamed protocol, the smoke protocol's tiny ones for smoke)."""
    base = SMOKE if name == "smoke" else {}
    return {k: base.get(k, Protocol.__dataclass_fields__[k].default) for k in PASSIVE_KNOBS}


def passive_conditions(p: Protocol) -> list[str]:
    """The protocol's conditions that the passive test runs: all but jitter, which changes
    when a simulator samples the world and has no meaning for recorded footage."""
    return [c for c in p.conditions if c.partition(":")[0] != "jitter"]


def passive_settings(p: Protocol) -> dict[str, Any]:
    """What decides a passive result's numbers; stored in each result and compared."""
    return {"env": p.env, "split": p.test_split, "episodes": int(p.passive_episodes),
            "steps": int(p.passive_steps), "seed": int(p.passive_seed),
            "ssim_frames": int(p.ssim_frames), "conditions": passive_conditions(p)}


def protocol(name: str, **overrides: Any) -> Protocol:
    """The named protocol (``v2`` or ``smoke``) with ``overrides`` (None values ignored)."""
    base = {"v2": {}, "smoke": SMOKE}
    if name not in base:
        raise UserError(f"unknown protocol {name!r}; choose v2 or smoke")
    kw = dict(base[name])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return Protocol(**kw)


# ----------------------------------------------------------------------------- work list


def condition_slug(c: str) -> str:
    return c.replace(":", "-")


def run_name(policy: str, seed: int) -> str:
    return f"{policy}-s{seed}"


def trained_policy(policy: str) -> str:
    """The policy whose training produces ``policy``'s weights."""
    return DERIVED.get(policy, policy)


def runs(p: Protocol) -> list[tuple[str, int]]:
    """Seed-major (policy, seed) runs: a sweep stopped early covers every policy on the first seeds."""
    return [(pol, s) for s in p.seeds for pol in p.policies]


def select_part(items: list, part: str | None) -> list:
    """``part`` 'K/N' keeps items K-1, K-1+N, ... (a round-robin share); None keeps all."""
    if not part:
        return list(items)
    try:
        k, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise UserError(f"--part must be K/N with 1 <= K <= N, e.g. 2/5; got {part!r}") from None
    if not 1 <= k <= n:
        raise UserError(f"--part must be K/N with 1 <= K <= N, e.g. 2/5; got {part!r}")
    return [x for i, x in enumerate(items) if i % n == k - 1]


def trainings_needed(p: Protocol, selected: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Trained runs that ``selected`` runs need (their own or their base's; the EMA target's)."""
    need: list[tuple[str, int]] = []
    for pol, s in selected:
        for q in ([trained_policy(pol)] + ([EMA_TARGET] if pol in ("cnn-ema", "lstm-ema") else [])):
            if (q, s) not in need:
                need.append((q, s))
    return need


@dataclass(frozen=True)
class Layout:
    out: Path
    data: Path
    passive_data: Path

    @classmethod
    def of(cls, out: str | Path, data: str | Path | None = None,
           passive_data: str | Path | None = None) -> Layout:
        o = Path(out)
        return cls(o, Path(data) if data else o / "data",
                   Path(passive_data) if passive_data else o / "passive_data")

    def run(self, policy: str, seed: int) -> Path:
        return self.out / "runs" / run_name(policy, seed)

    def cell(self, policy: str, seed: int, condition: str, road: int) -> Path:
        return self.out / "cells" / run_name(policy, seed) / condition_slug(condition) / f"road{road}.json"

    def calibration(self, policy: str, seed: int) -> Path:
        return self.out / "calibration" / f"{run_name(policy, seed)}.json"

    def passive(self, policy: str, seed: int) -> Path:
        return self.out / "passive" / f"{run_name(policy, seed)}.json"

    def run_done(self, policy: str, seed: int) -> bool:
        r = self.run(policy, seed)
        return (r / "DONE").is_file() and (r / "model.safetensors").is_file()


def check_or_store_fingerprint(p: Protocol, lay: Layout) -> None:
    """OUT/protocol.json pins the recipe: resuming with other knobs would mix incomparable runs."""
    from policies.atomicio import atomic_write_json

    f = lay.out / "protocol.json"
    fp = p.fingerprint()
    if f.is_file():
        old = json.loads(f.read_text()).get("fingerprint", {})
        diff = {k: (old.get(k), v) for k, v in fp.items() if old.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise UserError(f"{lay.out} was made with other settings ({lines}); pass the same "
                            f"settings to resume, or another --out for a new sweep")
        return
    lay.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(f, {"protocol": p.name, "fingerprint": fp, "id": p.fingerprint_id()})


def passive_done(p: Protocol, lay: Layout, policy: str, seed: int) -> bool:
    """A passive result exists for this run and was made with the protocol's settings."""
    f = lay.passive(policy, seed)
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("settings") == passive_settings(p)
    except (OSError, json.JSONDecodeError):
        return False


def with_policies(p: Protocol, policies: tuple[str, ...] | None, seeds: tuple[int, ...] | None) -> Protocol:
    return replace(p, policies=tuple(policies) if policies else p.policies,
                   seeds=tuple(seeds) if seeds else p.seeds)

#!/usr/bin/env python
"""Reproduce the paper's central comparison in simulation and write docs/results.md.

Lechner et al. (2020) compared a 19-neuron NCP with LSTM, GRU, CT-RNN and a feed-forward CNN
(all behind the same perception CNN) on held-out roads, under pixel noise of variance
0.1 / 0.2 / 0.3, and measured attention robustness by SSIM of saliency maps. This script runs
that protocol with the project's own CLI verbs, each stage resumable:

1. ``driving collect``: one recorded dataset (training roads) shared by every policy,
2. ``driving train``: every policy × every training seed on that same data,
3. ``driving eval``: closed loop on held-out roads, clean, noise (severities 3/4/5 are the
   paper's σ² 0.1/0.2/0.3), fog and rain, with the same episodes for every run (paired),
4. ``driving explain --ssim``: attention SSIM (clean vs corrupted VisualBackProp maps),
5. ``driving compare`` on one seed's reports (episode-level curves), plus this script's own
   aggregation over training seeds (mean ± 95% Student-t interval over seeds),
6. parameter counts (total, perception CNN, core + readout), and ``docs/results.md``.

Rerunning the same command skips every stage whose outputs are complete (the dataset skips
recorded seeds, an interrupted training continues from ``RUN/last/``); ``--policies`` and
``--seeds`` run a subset, and ``--report-only`` rewrites the tables from what exists.

    python scripts/reproduce_paper.py --out results/paper --seeds 0,1,2

**Protocol v2** (issue 16; `driving.sweep`, docs/sweep.md): ``--protocol v2`` runs the
reviewed comparison instead: every policy of the factory (the wiring, smoothing and time
controls included), 5 training seeds, 10 held-out roads × 45 s per condition, 14 conditions,
strict interventions, paired statistics; every training and every (run, condition, road)
evaluation is a Ray task (``--ray-address auto|HOST:PORT`` joins a cluster, none starts a
local one), resumable, in parts (``--part K/N``). ``--protocol smoke`` is its cheap version
for tests. Without ``--protocol`` (or with ``v1``) the script runs the v1 comparison above.

    python scripts/reproduce_paper.py --protocol v2 --out runs/v2 --artefacts results/v2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from driving.errors import UserError  # noqa: E402
from policies.factory import POLICY_NAMES  # noqa: E402

#: Every policy the factory builds (the v2 sweep's default); v1 compared the first eight.
ALL_POLICIES = tuple(POLICY_NAMES)
V1_POLICIES = ("ncp-cfc", "ncp-ltc", "lstm", "gru", "ctrnn", "cnn", "ncp-random", "ncp-full")
#: Metrics tabulated per condition: (key in a report row, label, format, higher is better).
METRICS = (
    ("completion_pct", "route completion %", "{:.1f}", True),
    ("crashes_per_episode", "crashes / episode", "{:.2f}", False),
    ("mean_abs_cross_track_m", "mean |cross-track| (m)", "{:.3f}", False),
    ("autonomy_pct", "autonomy %", "{:.1f}", True),
    ("lane_departures_per_km", "lane departures / km", "{:.2f}", False),
)
PAPER_NOISE = {3: 0.1, 4: 0.2, 5: 0.3}  # driving/corruptions.py: noise severity -> σ²


@dataclass
class Plan:
    """Everything that decides the numbers; stored in OUT/plan.json to make resumes safe."""

    out: str = "results/paper"
    policies: tuple[str, ...] = V1_POLICIES
    seeds: tuple[int, ...] = (0, 1, 2)
    env: str = "liquid_drive/RandomRoad-v0"
    train_split: str = "train"
    test_split: str = "test"
    data_seed: int = 0
    episodes: int = 16
    steps: int = 300
    dart_noise: float = 0.15
    epochs: int = 3
    max_frames: int = 1200
    patience: int = 0
    val_fraction: float = 0.2
    train_extra: tuple[str, ...] = ()
    eval_seed: int = 1000
    eval_episodes: int = 2
    eval_steps: int = 200
    conditions: tuple[str, ...] = ("none", "noise:3", "noise:4", "noise:5", "fog:3", "rain:3")
    ssim: tuple[str, ...] = ("noise:3", "fog:3")
    ssim_seeds: tuple[int, ...] = (0,)
    ssim_steps: int = 200
    workers: int = 2
    jobs: int = 1

    def eval_workers(self) -> int:
        """Evaluation processes per pipeline: the cores are shared by `jobs` pipelines."""
        return max(1, self.workers // max(1, self.jobs))
    compare_seed: int | None = None
    docs: str = "docs/results.md"
    artefacts: str = ""  # small outputs to keep (tables, plots, reports); "" = OUT
    data: str = ""  # the recorded dataset; "" = OUT/data (another sweep can share one)
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # knobs that change results (policies/seeds/jobs/paths do not: subsets share outputs)
    def fingerprint(self) -> dict[str, Any]:
        keys = ("env", "train_split", "test_split", "data_seed", "episodes", "steps", "dart_noise",
                "epochs", "max_frames", "patience", "val_fraction", "train_extra", "eval_seed",
                "eval_episodes", "eval_steps", "conditions", "ssim_steps")
        d = asdict(self)
        return {k: list(d[k]) if isinstance(d[k], tuple) else d[k] for k in keys}


# ----------------------------------------------------------------------------- paths


def data_dir(p: Plan) -> Path:
    return Path(p.data) if p.data else Path(p.out) / "data"


def run_dir(p: Plan, policy: str, seed: int) -> Path:
    return Path(p.out) / "runs" / f"{policy}-s{seed}"


def eval_dir(p: Plan, policy: str, seed: int) -> Path:
    return Path(p.out) / "eval" / f"{policy}-s{seed}"


def ssim_file(p: Plan, policy: str, seed: int, corruption: str) -> Path:
    return Path(p.out) / "ssim" / f"{policy}-s{seed}-{corruption.replace(':', '')}.json"


# ----------------------------------------------------------------------------- stages


@dataclass
class Stage:
    """One unit of work: its CLI argv, the test that says it is done, what to do after."""

    name: str
    argv: list[str]
    done: Callable[[], bool]
    before: Callable[[], list[str]] | None = None  # returns extra argv (e.g. --resume)
    after: Callable[[], None] | None = None
    call: Callable[[], None] | None = None  # in-process work instead of a CLI verb


def _train_done(run: Path) -> bool:
    return (run / "model.safetensors").is_file() and (run / "DONE").is_file()


def _report_done(d: Path) -> bool:
    f = d / "report.json"
    if not f.is_file():
        return False
    try:
        return bool(json.loads(f.read_text()).get("results"))
    except (OSError, json.JSONDecodeError):
        return False


def _json_done(f: Path) -> bool:
    try:
        return f.is_file() and "ssim_mean" in json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def collect_stage(p: Plan) -> Stage:
    d = data_dir(p)
    argv = ["collect", "--env", p.env, "--episodes", str(p.episodes), "--steps", str(p.steps),
            "--out", str(d), "--seed", str(p.data_seed), "--workers", str(p.workers),
            "--dart-noise", str(p.dart_noise), "--env-kwargs",
            json.dumps({"split": p.train_split}) if p.train_split else "{}", "--quiet"]
    marker = d / "COMPLETE"
    return Stage("record expert drives (training roads)", argv, marker.is_file,
                 after=lambda: _write_text(marker, "recorded by scripts/reproduce_paper.py\n"))


def train_stage(p: Plan, policy: str, seed: int) -> Stage:
    run = run_dir(p, policy, seed)
    argv = ["train", "--data", str(data_dir(p)), "--policy", policy, "--out", str(run),
            "--epochs", str(p.epochs), "--seed", str(seed), "--threads", "1",
            "--patience", str(p.patience), "--val-fraction", str(p.val_fraction),
            *p.train_extra]
    if p.max_frames:
        argv += ["--max-frames", str(p.max_frames)]

    def before() -> list[str]:
        if (run / "last").exists():
            return ["--resume"]
        if run.exists():  # killed before its first epoch finished: nothing worth keeping
            shutil.rmtree(run)
        return []

    return Stage(f"train {policy} seed {seed}", argv, lambda: _train_done(run), before,
                 after=lambda: _write_text(run / "DONE", "trained by scripts/reproduce_paper.py\n"))


def eval_stages(p: Plan, policy: str, seed: int) -> list[Stage]:
    """One `driving eval` of the run over every condition (`none,noise:3,fog:3,...`: the
    conditions go to eval as they are, parsed once by `driving.conditions`)."""
    d = eval_dir(p, policy, seed)
    argv = ["eval", "--checkpoint", str(run_dir(p, policy, seed)), "--env", p.env,
            "--episodes", str(p.eval_episodes), "--corruptions", ",".join(p.conditions),
            "--out", str(d), "--seed", str(p.eval_seed), "--workers", str(p.eval_workers()),
            "--steps", str(p.eval_steps), "--no-plots",
            "--force"]  # runs only when the report is missing or unusable
    if p.test_split:
        argv += ["--env-config", json.dumps({"split": p.test_split})]
    # the expert drives the same (paired) episodes: once is enough, on the first run
    if (policy, seed) != (p.policies[0], p.seeds[0]):
        argv.append("--no-expert-reference")
    return [Stage(f"evaluate {policy} seed {seed} [{', '.join(p.conditions)}] (held-out roads)", argv,
                  lambda: _report_done(d))]


def ssim_stage(p: Plan, policy: str, seed: int, corruption: str) -> Stage:
    f = ssim_file(p, policy, seed, corruption)
    argv = ["explain", "--ssim", "--checkpoint", str(run_dir(p, policy, seed)), "--env", p.env,
            "--corruption", corruption, "--steps", str(p.ssim_steps), "--out", str(f),
            "--seed", str(p.eval_seed), "--force"]  # runs only when the file is missing or unusable
    return Stage(f"attention SSIM {policy} seed {seed} {corruption}", argv, lambda: _json_done(f),
                 before=lambda: (f.parent.mkdir(parents=True, exist_ok=True), [])[1])


def pipeline(p: Plan, policy: str, seed: int) -> list[Stage]:
    """Train, evaluate, attention SSIM: one (policy, seed), in order."""
    pipe = [train_stage(p, policy, seed), *eval_stages(p, policy, seed)]
    if seed in p.ssim_seeds:
        pipe += [ssim_stage(p, policy, seed, c) for c in p.ssim]
    return pipe


def run_order(p: Plan) -> list[tuple[str, int]]:
    """Seed-major: a run stopped early has covered every policy on the first seeds."""
    return [(policy, seed) for seed in p.seeds for policy in p.policies]


def plan_pipelines(p: Plan) -> list[list[Stage]]:
    return [pipeline(p, policy, seed) for policy, seed in run_order(p)]


# ----------------------------------------------------------------------------- running


class Runner:
    """Runs stages in-process through `driving.cli.main`, records each stage's seconds."""

    def __init__(self, plan: Plan, key: str = "collect", log=sys.stderr) -> None:
        self.plan = plan
        self.log = log
        self.lock = threading.Lock()
        self.timings_path = Path(plan.out) / "timings" / f"{key}.json"
        self.timings: dict[str, float] = {}
        self.timings = _read_json(self.timings_path)
        self.done = self.skipped = 0
        self.failed: list[str] = []

    def say(self, msg: str) -> None:
        with self.lock:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=self.log, flush=True)

    def run_stage(self, st: Stage) -> bool:
        if st.done():
            self.say(f"skip  {st.name}: already complete")
            with self.lock:
                self.skipped += 1
            return True
        t = time.perf_counter()
        if st.call is not None:
            try:
                st.call()
                code = 0
            except (OSError, ValueError, KeyError) as exc:
                self.say(f"error in {st.name}: {type(exc).__name__}: {exc}")
                code = 1
        else:
            argv = list(st.argv) + (st.before() if st.before else [])
            self.say(f"start {st.name}\n    $ driving {shlex.join(argv)}")
            code = self._invoke(argv, st.name)
        secs = time.perf_counter() - t
        if code != 0:
            self.say(f"FAIL  {st.name} (exit {code}) after {secs:.0f} s")
            with self.lock:
                self.failed.append(st.name)
            return False
        if st.after:
            st.after()
        with self.lock:
            self.timings[st.name] = round(secs, 1)
            self.done += 1
            _write_text(self.timings_path, json.dumps(self.timings, indent=1) + "\n")
        self.say(f"done  {st.name} in {secs:.0f} s")
        return True

    def _invoke(self, argv: list[str], name: str) -> int:
        from driving.cli import main

        try:
            return int(main(argv) or 0)
        except Exception as exc:  # a crashed stage must not lose the others' work
            self.say(f"error in {name}: {type(exc).__name__}: {exc}")
            return 1

    def run_pipeline(self, stages: list[Stage]) -> None:
        for st in stages:
            if not self.run_stage(st):
                return  # later stages need this one's output


def _pipeline_worker(p: Plan, policy: str, seed: int) -> tuple[int, int, list[str]]:
    """In a worker process: one pipeline, its verbs' output in OUT/logs/POLICY-sSEED.log,
    the progress lines on the console."""
    import torch

    torch.set_num_threads(1)
    logs = Path(p.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(2), "w")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(logs / f"{policy}-s{seed}.log", "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            r = Runner(p, key=f"{policy}-s{seed}", log=console)
            r.run_pipeline(pipeline(p, policy, seed))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            console.flush()
    return r.done, r.skipped, r.failed


def _read_json(f: Path) -> dict:
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def read_timings(p: Plan) -> dict[str, float]:
    """Stage seconds in plan order (recording first), from OUT/timings/*.json."""
    d = Path(p.out) / "timings"
    out = {k: v for k, v in _read_json(d / "collect.json").items()}
    for policy, seed in run_order(p):
        out.update(_read_json(d / f"{policy}-s{seed}.json"))
    return out


def check_plan(p: Plan) -> None:
    """Bad input and a changed recipe in an existing OUT → UserError naming the fix."""
    from driving.corruptions import CORRUPTIONS, all_names

    bad = [x for x in p.policies if x not in ALL_POLICIES]
    if bad:
        raise UserError(f"unknown policy {bad[0]!r} in --policies; choose from {', '.join(ALL_POLICIES)}")
    if not p.policies or not p.seeds:
        raise UserError("--policies and --seeds must name at least one each")
    for name, v in (("--episodes", p.episodes), ("--steps", p.steps), ("--epochs", p.epochs),
                    ("--eval-episodes", p.eval_episodes), ("--eval-steps", p.eval_steps),
                    ("--workers", p.workers), ("--jobs", p.jobs)):
        if v < 1:
            raise UserError(f"{name} must be >= 1, got {v}")
    from driving.conditions import parse_conditions, parse_image_condition

    for c in p.conditions:  # the shared parser: one condition per item, each with a severity
        try:
            if c != "none" and (":" not in c or len(parse_conditions(c)) != 1):
                raise ValueError("write it as NAME:SEVERITY")
            parse_conditions(c)
        except ValueError as exc:
            raise UserError(f"--conditions {c!r} must be 'none' or NAME:SEVERITY with severity "
                            f"1..5, NAME one of {', '.join(all_names())} ({exc})") from None
    for c in p.ssim:
        try:
            if parse_image_condition(c).severity < 1:
                raise ValueError("severity 0 is the clean frame")
        except ValueError as exc:
            raise UserError(f"--ssim {c!r} must be an image corruption NAME:SEVERITY with severity "
                            f"1..5, e.g. noise:3 ({', '.join(CORRUPTIONS)}): {exc}") from None
    if p.ssim and p.ssim_steps < 1:
        raise UserError("--ssim-steps must be >= 1")


def load_or_store_plan(p: Plan) -> None:
    """OUT/plan.json pins the recipe: resuming with other knobs would mix incomparable runs."""
    out = Path(p.out)
    f = out / "plan.json"
    fp = p.fingerprint()
    if f.is_file():
        old = json.loads(f.read_text()).get("fingerprint", {})
        diff = {k: (old.get(k), v) for k, v in fp.items() if old.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise UserError(f"{out} was made with other settings ({lines}); pass the same settings "
                            f"to resume, or another --out for a new comparison")
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_text(f, json.dumps({"fingerprint": fp, "id": _hash(fp)}, indent=1) + "\n")


def _copy(src: Path, dst: Path) -> None:
    _write_text(dst, src.read_text())


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_all(p: Plan) -> Runner:
    check_plan(p)
    load_or_store_plan(p)
    r = Runner(p)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    pipes = plan_pipelines(p)
    n = sum(len(x) for x in pipes) + 1
    r.say(f"plan: {len(p.policies)} policies x {len(p.seeds)} seeds, {n} stages, jobs={p.jobs}, "
          f"out={p.out}")
    if not r.run_stage(collect_stage(p)):
        raise RuntimeError("recording the dataset failed; see the messages above")
    if p.jobs <= 1:
        for (policy, seed), pipe in zip(run_order(p), pipes):
            r.timings_path = Path(p.out) / "timings" / f"{policy}-s{seed}.json"
            r.timings = _read_json(r.timings_path)
            r.run_pipeline(pipe)
    else:  # worker processes that import torch once and run whole pipelines in order
        import multiprocessing as mp

        with ProcessPoolExecutor(p.jobs, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_pipeline_worker, p, pol, seed) for pol, seed in run_order(p)]
            for fut in futs:
                done, skipped, failed = fut.result()
                r.done += done
                r.skipped += skipped
                r.failed += failed
    wall = time.perf_counter() - t0
    r.say(f"stages: {r.done} run, {r.skipped} already complete, {len(r.failed)} failed "
          f"({wall:.0f} s)")
    sessions = _read_json(Path(p.out) / "timings" / "sessions.json").get("sessions", [])
    sessions.append({"started_utc": started, "wall_s": round(wall, 1), "jobs": p.jobs,
                     "stages_run": r.done, "failed": len(r.failed), "command": p.command})
    _write_text(Path(p.out) / "timings" / "sessions.json",
                json.dumps({"sessions": sessions}, indent=1) + "\n")
    return r


# ----------------------------------------------------------------------------- analysis


def parameter_counts(policies: Sequence[str]) -> list[dict[str, Any]]:
    """Trainable parameters of each architecture as built for the 78×200 camera (storage
    counts, as v1 printed them, plus the effective ones of `policies.controls`)."""
    from policies.controls import parameter_table
    from policies.factory import build_policy

    rows = []
    for name in policies:
        t = parameter_table(build_policy(name))
        rows.append({
            "policy": name,
            "total": t["storage"],
            "cnn": t["cnn"],
            "core_and_readout": t["storage"] - t["cnn"],
            "core": t["core_storage"],
            "effective": t["effective"],
            "core_effective": t["core_effective"],
            "neurons": t["neurons"] if t["synapses"] is not None or t["core_storage"] else 0,
            "synapses": t["synapses"],
            "sensory_synapses": t["sensory_synapses"],
        })
    return rows


def _row_value(row: dict, key: str) -> float | None:
    if key == "crashes_per_episode":
        v = row.get("crashes_per_episode")
        if v is None and row.get("episodes"):
            v = row["crashes"] / row["episodes"]
        return v
    return row.get(key)


def _cond_key(row: dict) -> str:
    return "clean" if row["corruption"] == "none" else f"{row['corruption']}:{int(row['severity'])}"


def _image_blind(rows: list[dict]) -> bool:
    """True when every condition drove the same (|CTE| to the mm, crashes, completion to 0.1%):
    the steering ignores the camera (e.g. the perception CNN's last ReLU layer died)."""
    sig = {(round(float(r["mean_abs_cross_track_m"]), 3), int(r["crashes"]),
            round(float(r["completion_pct"]), 1)) for r in rows}
    return len(rows) > 2 and len(sig) == 1


def best_val_mse(run: Path) -> float | None:
    """Lowest validation MSE over the run's epochs (RUN/metrics.csv), None if unknown."""
    import csv

    f = run / "metrics.csv"
    if not f.is_file():
        return None
    with open(f) as fh:
        vals = [float(r["val_mse"]) for r in csv.DictReader(fh) if r.get("val_mse") not in (None, "")]
    return min(vals) if vals else None


def aggregate(p: Plan) -> dict[str, Any]:
    """Per policy and condition: mean ± 95% interval over training seeds of each run's mean."""
    from driving.metrics import mean_ci95

    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    seeds_done: dict[str, list[int]] = {}
    conds: list[str] = []
    reference = None
    blind: list[str] = []
    learned: dict[str, dict[str, dict[str, list[float]]]] = {}
    for policy in p.policies:
        for seed in p.seeds:
            d = eval_dir(p, policy, seed)
            if not _report_done(d):
                continue
            rep = json.loads((d / "report.json").read_text())
            if rep.get("reference") and reference is None:
                reference = rep["reference"]
            seeds_done.setdefault(policy, []).append(seed)
            if _image_blind(rep["results"]):
                blind.append(f"{policy}-s{seed}")
            for row in rep["results"]:
                c = _cond_key(row)
                if c not in conds:
                    conds.append(c)
                for key, *_ in METRICS:
                    v = _row_value(row, key)
                    if v is None:
                        continue
                    per.setdefault(policy, {}).setdefault(c, {}).setdefault(key, []).append(float(v))
                    if f"{policy}-s{seed}" not in blind:
                        learned.setdefault(policy, {}).setdefault(c, {}).setdefault(key, []).append(float(v))
    order = sorted(conds, key=lambda c: (c != "clean", c.split(":")[0], c))

    def stats(src: dict) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for policy, by_cond in src.items():
            out[policy] = {}
            for c, by_key in by_cond.items():
                out[policy][c] = {}
                for key, vals in by_key.items():
                    m, lo, hi = mean_ci95(vals)
                    out[policy][c][key] = {"mean": m, "ci95": None if lo is None else [lo, hi],
                                           "n": len(vals), "values": vals}
        return out

    table, table_learned = stats(per), stats(learned)
    ssim: dict[str, dict[str, Any]] = {}
    for policy in p.policies:
        for c in p.ssim:
            vals, skipped = [], []
            for seed in p.ssim_seeds:
                f = ssim_file(p, policy, seed, c)
                if not _json_done(f):
                    continue
                # an image-blind run's saliency maps are constant: SSIM 1 says nothing
                if f"{policy}-s{seed}" in blind:
                    skipped.append(seed)
                else:
                    vals.append(json.loads(f.read_text())["ssim_mean"])
            if vals or skipped:
                m, lo, hi = mean_ci95(vals)
                ssim.setdefault(policy, {})[c] = {"mean": m if vals else None,
                                                  "ci95": None if lo is None else [lo, hi],
                                                  "n": len(vals), "excluded_blind_seeds": skipped}
    ref = None
    if reference:
        rows = reference["results"] if isinstance(reference, dict) else reference
        ref = {_cond_key(r): {k: _row_value(r, k) for k, *_ in METRICS} for r in rows}
    val = {f"{pol}-s{seed}": best_val_mse(run_dir(p, pol, seed)) for pol, seed in run_order(p)
           if _train_done(run_dir(p, pol, seed))}
    return {"conditions": order, "table": table, "seeds_done": seeds_done, "ssim": ssim,
            "image_blind_runs": blind, "best_val_mse": val, "table_learned": table_learned,
            "expert": ref}


def plot_curves(p: Plan, agg: dict[str, Any], out: Path) -> list[Path]:
    """One figure per metric: a panel per corruption, severity on x (0 = clean), a line per
    policy with its 95% interval over seeds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sev_of: dict[str, list[int]] = {}
    for c in p.conditions:
        name, _, sev = c.partition(":")
        if name != "none":
            sev_of.setdefault(name, []).append(int(sev))
    corrs = list(sev_of)
    if not corrs or not agg["table"]:
        return []
    paths = []
    colors = plt.get_cmap("tab10")
    for key, label, _, _ in METRICS[:3]:
        fig, axes = plt.subplots(1, len(corrs), figsize=(4.2 * len(corrs), 3.6), sharey=True,
                                 squeeze=False)
        fig.suptitle(f"{label}: mean over training seeds, shaded 95% interval over seeds "
                     "(clipped to the metric's range)", fontsize=9)
        for ax, corr in zip(axes[0], corrs):
            for i, (policy, by_cond) in enumerate(agg["table"].items()):
                xs, ms, los, his = [], [], [], []
                for sev in [0, *sorted(sev_of[corr])]:
                    c = "clean" if sev == 0 else f"{corr}:{sev}"
                    s = by_cond.get(c, {}).get(key)
                    if s is None:
                        continue
                    xs.append(sev)
                    ms.append(s["mean"])
                    lo, hi = s["ci95"] or (s["mean"], s["mean"])
                    los.append(max(lo, 0.0))  # the metrics are >= 0; completion <= 100
                    his.append(min(hi, 100.0) if key == "completion_pct" else hi)
                if not xs:
                    continue
                style = "-" if policy.startswith("ncp-cfc") or policy == "ncp-ltc" else "--"
                ax.plot(xs, ms, style, marker="o", ms=3, color=colors(i % 10), label=policy,
                        lw=2.2 if policy in ("ncp-cfc", "ncp-ltc") else 1.2)
                ax.fill_between(xs, los, his, color=colors(i % 10), alpha=0.07)
            ref = (agg.get("expert") or {}).get("clean", {}).get(key)
            if ref is not None:
                ax.axhline(ref, color="k", ls=":", lw=1, label="expert (clean)")
            title = corr if corr != "noise" else "noise (severity 3/4/5 = σ² 0.1/0.2/0.3)"
            ax.set_title(title, fontsize=9)
            ax.set_xticks(range(6))
            ax.set_xlim(-0.2, 5.2)
            ax.set_xlabel("severity (0 = clean)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(label)
        if key == "completion_pct":
            axes[0][0].set_ylim(0, 105)
        else:
            axes[0][0].set_ylim(bottom=0)
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / f"robustness_{key}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    if agg["ssim"]:
        paths.append(plot_ssim(p, agg, out))
    return paths


def plot_ssim(p: Plan, agg: dict[str, Any], out: Path) -> Path:
    """Bars of attention SSIM per policy and corruption, with the interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pols = [x for x in p.policies if x in agg["ssim"]]
    fig, ax = plt.subplots(figsize=(1.0 + 1.1 * len(pols), 3.4))
    width = 0.8 / max(1, len(p.ssim))
    for k, c in enumerate(p.ssim):
        ms, errs = [], [[], []]
        for pol in pols:
            s = agg["ssim"][pol].get(c)
            m = s["mean"] if s and s["mean"] is not None else np.nan
            lo, hi = (s["ci95"] if s and s["ci95"] else (m, m))
            ms.append(m)
            errs[0].append(m - lo)
            errs[1].append(hi - m)
        ax.bar(np.arange(len(pols)) + (k - (len(p.ssim) - 1) / 2) * width, ms, width, yerr=errs,
               capsize=2, label=c)
    ax.set_xticks(range(len(pols)))
    ax.set_xticklabels(pols, rotation=20, fontsize=8)
    ax.set_ylabel("attention SSIM (clean vs corrupted)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "attention_ssim.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _fmt_stat(s: dict | None, fmt: str) -> str:
    if s is None or s["mean"] is None or not math.isfinite(s["mean"]):
        return "–"
    if s["ci95"] is None:
        return fmt.format(s["mean"]) + f" (n={s['n']})"
    half = (s["ci95"][1] - s["ci95"][0]) / 2
    return f"{fmt.format(s['mean'])} ± {fmt.format(half)}"


def outcome_lines(p: Plan, agg: dict[str, Any]) -> list[str]:
    """Facts computed from the table: who is best where, and where the NCP does not win."""
    lines = []
    table = agg["table"]
    if not table:
        return ["No evaluation finished yet."]
    ncps = [x for x in ("ncp-cfc", "ncp-ltc") if x in table]
    for key, label, fmt, higher in METRICS[:3]:
        wins, losses = [], []
        for c in agg["conditions"]:
            vals = {pol: t[c][key]["mean"] for pol, t in table.items() if c in t and key in t[c]}
            if not vals:
                continue
            best = (max if higher else min)(vals, key=vals.get)
            tied = [pol for pol, v in vals.items() if fmt.format(v) == fmt.format(vals[best])]
            for n in ncps:
                if n not in vals:
                    continue
                if n in tied:
                    wins.append(f"{n} on {c}" + (" (tied)" if len(tied) > 1 else ""))
                else:
                    losses.append((n, c, best))
            who = ", ".join(tied) if len(tied) < len(vals) else "all policies"
            lines.append(f"- {label}, {c}: best {who} ({fmt.format(vals[best])})"
                         + "".join(f"; {n} {fmt.format(vals[n])}" for n in ncps
                                   if n in vals and n not in tied))
        if ncps:
            lines.append(f"  - {label}: an NCP is best in {len(wins)} of {len(agg['conditions']) * len(ncps)} "
                         f"(NCP, condition) pairs" + (f" ({', '.join(wins)})" if wins else ""))
    return lines


def write_results_md(p: Plan, agg: dict[str, Any], params: list[dict], compare_dir: Path | None,
                     plots: list[Path], timings: dict[str, float], command: str) -> str:
    docs = Path(p.docs)
    rel = lambda q: os.path.relpath(q, docs.parent)  # noqa: E731
    total_s = sum(timings.values())
    sessions = _read_json(Path(p.out) / "timings" / "sessions.json").get("sessions", [])
    all_runs = len(p.policies) * len(p.seeds)
    done_runs = sum(len(v) for v in agg["seeds_done"].values())
    L = ["# Results: the paper's comparison, reproduced in simulation", ""]
    L += ["Generated by `scripts/reproduce_paper.py` from the outputs in "
          f"`{p.out}/` (rerun the command below to regenerate; it resumes)"
          + (f"; tables, plots, per-run reports and `summary.json` are kept in `{p.artefacts}/`"
             if p.artefacts else "") + ".", ""]
    L += ["## What ran", ""]
    L += [f"- **Command**: `{command}`",
          f"- **Data**: {p.episodes} expert drives × {p.steps} frames on `{p.env}` "
          f"(split `{p.train_split}`, data seed {p.data_seed}, DART steering noise σ {p.dart_noise}), "
          "the same dataset for every policy.",
          f"- **Training**: {p.epochs} epochs of at most {p.max_frames or 'all'} frames each "
          f"(behaviour cloning, the project's default recipe"
          + (f" with `{shlex.join(p.train_extra)}`" if p.train_extra else "")
          + f" otherwise; patience {p.patience}), "
          f"one torch thread; training seeds {', '.join(map(str, p.seeds))}.",
          f"- **Evaluation**: closed loop on held-out roads (split `{p.test_split}`), "
          f"{p.eval_episodes} episodes × {p.eval_steps} steps (10 Hz) per condition, eval seed "
          f"{p.eval_seed}: the same roads, starts and traffic for every policy and seed (paired). "
          f"Conditions: {', '.join(agg['conditions'])}. Noise severities 3/4/5 are additive "
          "Gaussian pixel noise of variance σ² = 0.1/0.2/0.3 on [0, 1] images, the paper's levels.",
          f"- **Attention SSIM**: VisualBackProp maps of the clean vs corrupted frame along one clean "
          f"closed-loop drive of {p.ssim_steps} frames, training seed(s) "
          f"{', '.join(map(str, p.ssim_seeds))}, corruptions {', '.join(p.ssim)}.",
          f"- **Runs finished**: {done_runs} of {all_runs} (policy, seed) evaluations.",
          f"- **Budget used**: {total_s / 60:.0f} min summed over stages"
          + (f" ({p.jobs} pipelines at once)" if p.jobs > 1 else "")
          + (f", {sum(x['wall_s'] for x in sessions) / 60:.0f} min wall clock over "
             f"{len(sessions)} invocation(s)" if sessions else "")
          + "; CPU only, one torch thread per process.", ""]
    missing = [f"{pol} seed {s}" for pol in p.policies for s in p.seeds
               if s not in agg["seeds_done"].get(pol, [])]
    if missing:
        L += [f"**Not finished** (no evaluation yet): {', '.join(missing)}.", ""]
    notes = Path(p.artefacts or p.out) / "notes.md"
    if notes.is_file():
        L += ["## Outcome", "", notes.read_text().strip(), ""]
    L += ["## Closed-loop metrics (mean ± half the 95% interval over training seeds)", ""]
    L += ["Each cell is the mean over training seeds of a run's mean over episodes; the interval is "
          "the Student-t 95% interval over seeds (n = number of seeds; `(n=1)` has none).", ""]
    conds = agg["conditions"]
    exp = agg.get("expert") or {}
    for key, label, fmt, higher in METRICS:
        L += [f"### {label} ({'higher' if higher else 'lower'} is better)", ""]
        L += ["| policy | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
        for pol in p.policies:
            if pol not in agg["table"]:
                continue
            cells = [_fmt_stat(agg["table"][pol].get(c, {}).get(key), fmt) for c in conds]
            L.append(f"| {pol} (n={len(agg['seeds_done'][pol])}) | " + " | ".join(cells) + " |")
        if exp.get("clean", {}).get(key) is not None:
            L.append("| expert (privileged, clean) | " + fmt.format(exp["clean"][key])
                     + " |" + " |" * (len(conds) - 1))
        L.append("")
    if plots:
        L += ["### Robustness curves", "",
              "Mean over seeds, shaded 95% interval over seeds; severity 0 is the clean run; the "
              "dotted line is the privileged expert, clean.", ""]
        L += [f"![{q.stem}]({rel(q)})" for q in plots]
        L.append("")
    if agg.get("image_blind_runs") and agg.get("table_learned"):
        L += ["### Only the runs that learned to use the camera", "",
              "The same statistics without the image-blind runs (listed under *Training* below); "
              "`n` = the seeds that remain. This conditions on training success, so read it beside "
              "the full table, not instead of it.", ""]
        for key, label, fmt, higher in METRICS[:3]:
            L += [f"**{label}** ({'higher' if higher else 'lower'} is better)", "",
                  "| policy | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
            for pol in p.policies:
                t = agg["table_learned"].get(pol)
                if not t:
                    L.append(f"| {pol} (n=0) | " + " | ".join("–" for _ in conds) + " |")
                    continue
                n = t.get("clean", {}).get(key, {}).get("n", 0)
                L.append(f"| {pol} (n={n}) | " + " | ".join(_fmt_stat(t.get(c, {}).get(key), fmt)
                                                          for c in conds) + " |")
            L.append("")
    if agg["ssim"]:
        L += ["## Attention robustness (SSIM of clean vs corrupted VisualBackProp maps)", "",
              "Higher = the saliency map moves less under the corruption (1 = identical). "
              f"Mean over {p.ssim_steps} frames, then over seeds. Image-blind runs are left out "
              "(their maps are constant, so their SSIM is a meaningless 1); `n` counts the seeds "
              "that remain.", ""]
        L += ["| policy | " + " | ".join(p.ssim) + " |", "|---|" + "---|" * len(p.ssim)]
        for pol in p.policies:
            if pol in agg["ssim"]:
                L.append(f"| {pol} | " + " | ".join(_fmt_stat(agg["ssim"][pol].get(c), "{:.3f}")
                                                   for c in p.ssim) + " |")
        L.append("")
    if agg.get("best_val_mse"):
        L += ["## Training: best validation MSE per run", "",
              "MSE of the normalised steering on held-out recorded episodes (lower is better); "
              "a run stuck near the variance of the steering has learnt a constant."]
        if agg.get("image_blind_runs"):
            L += ["", "**Image-blind runs** (every condition drove exactly the same, so the steering "
                  "ignored the camera): " + ", ".join(agg["image_blind_runs"]) + "."]
        L += ["", "| policy | " + " | ".join(f"seed {s}" for s in p.seeds) + " |",
              "|---|" + "---:|" * len(p.seeds)]
        for pol in p.policies:
            cells = []
            for seed in p.seeds:
                v = agg["best_val_mse"].get(f"{pol}-s{seed}")
                mark = " (blind)" if f"{pol}-s{seed}" in agg.get("image_blind_runs", []) else ""
                cells.append("–" if v is None else f"{v:.4f}{mark}")
            L.append(f"| {pol} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["## Parameter counts", "",
          "Trainable parameters as built for the 78×200 camera. Every policy has the same "
          "perception CNN; `core + readout` is the rest. Masked (absent) synapses of the NCP "
          "wirings still have parameter entries, so the three 19-neuron CfC variants count the "
          "same; `synapses` counts neuron-to-neuron + sensory synapses that exist.", ""]
    L += ["| policy | total | CNN | core + readout | core | neurons | synapses (+ sensory) |",
          "|---|---:|---:|---:|---:|---:|---|"]
    for r in params:
        syn = "–" if r["synapses"] is None else f"{r['synapses']} + {r['sensory_synapses']}"
        L.append(f"| {r['policy']} | {r['total']:,} | {r['cnn']:,} | {r['core_and_readout']:,} | "
                 f"{r['core']:,} | {r['neurons']} | {syn} |")
    L.append("")
    L += ["## Facts computed from the table", "",
          "Best policy per condition by the mean over seeds (ties and overlapping intervals are "
          "not resolved here: compare the intervals above).", ""]
    L += outcome_lines(p, agg)
    L.append("")
    if compare_dir is not None and (compare_dir / "compare.md").is_file():
        L += ["## Episode-level comparison of one seed (`driving compare`)", "",
              f"`driving compare` over the seed-{p.compare_seed} reports: "
              f"[{rel(compare_dir / 'compare.md')}]({rel(compare_dir / 'compare.md')}), with curves "
              f"`compare_<metric>.png` in the same folder.", ""]
    L += ["## Stage times (s)", "", "| stage | seconds |", "|---|---:|"]
    L += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    L.append("")
    text = "\n".join(L)
    text = _keep_v2_block(docs, text)
    _write_text(docs, text)
    return text


def _keep_v2_block(docs: Path, text: str) -> str:
    """The protocol-v2 block of the existing page (driving.sweep.report) survives a v1 rewrite."""
    from driving.sweep.report import V2_BEGIN, V2_END

    old = docs.read_text() if docs.is_file() else ""
    if V2_BEGIN not in old or V2_END not in old or V2_BEGIN in text:
        return text
    block = V2_BEGIN + old.split(V2_BEGIN, 1)[1].split(V2_END, 1)[0] + V2_END
    head, rest = text.split("\n", 1)
    return head + "\n\n" + block + "\n" + rest


def run_command(p: Plan, command: str) -> str:
    """The command that produced OUT (its last run), not a later `--report-only`."""
    sessions = _read_json(Path(p.out) / "timings" / "sessions.json").get("sessions", [])
    for sess in reversed(sessions):
        if sess.get("command"):
            return sess["command"]
    return " ".join(w for w in command.split(" ") if w != "--report-only")


def report(p: Plan, command: str) -> Path:
    """Aggregate what exists, run `driving compare`, plot, write summary.json and the doc."""
    command = run_command(p, command)
    out = Path(p.out)
    art = Path(p.artefacts or p.out)
    art.mkdir(parents=True, exist_ok=True)
    agg = aggregate(p)
    params = parameter_counts(p.policies)
    compare_dir = None
    seed = p.compare_seed if p.compare_seed is not None else p.seeds[0]
    p.compare_seed = seed
    dirs = [str(eval_dir(p, pol, seed)) for pol in p.policies if _report_done(eval_dir(p, pol, seed))]
    if dirs:
        from driving.cli import main

        compare_dir = art / "compare"
        if main(["compare", *dirs, "--out", str(compare_dir)]) != 0:
            compare_dir = None
    plots = plot_curves(p, agg, art)
    if art.resolve() != out.resolve():  # keep the small per-run outputs beside the tables
        for pol in p.policies:
            for seed in p.seeds:
                d = eval_dir(p, pol, seed)
                if _report_done(d):
                    _copy(d / "report.json", art / "reports" / f"{d.name}.json")
        for f in sorted((out / "ssim").glob("*.json")) if (out / "ssim").is_dir() else []:
            _copy(f, art / "ssim" / f.name)
        if (out / "plan.json").is_file():
            _copy(out / "plan.json", art / "plan.json")
    timings = read_timings(p)
    summary = {"plan": asdict(p), "aggregate": agg, "parameters": params, "timings_s": timings,
               "command": command}
    _write_text(art / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    write_results_md(p, agg, params, compare_dir, plots, timings, command)
    print(f"wrote {p.docs} and {art / 'summary.json'}", file=sys.stderr)
    return Path(p.docs)


# ----------------------------------------------------------------------------- CLI


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


def parse_args(argv: Sequence[str] | None) -> tuple[Plan, argparse.Namespace]:
    d = Plan()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default=d.out, help="output folder (data, runs, reports, tables)")
    ap.add_argument("--policies", type=_csv, default=",".join(d.policies),
                    help="comma list, or 'all'")
    ap.add_argument("--seeds", type=_ints, default="0,1,2", help="training seeds")
    ap.add_argument("--env", default=d.env)
    ap.add_argument("--train-split", default=d.train_split,
                    help="env split for recording ('' for an env without splits)")
    ap.add_argument("--test-split", default=d.test_split,
                    help="env split for evaluation ('' for an env without splits)")
    ap.add_argument("--data-seed", type=int, default=d.data_seed)
    ap.add_argument("--episodes", type=int, default=d.episodes, help="recorded expert drives")
    ap.add_argument("--steps", type=int, default=d.steps, help="frames per recorded drive")
    ap.add_argument("--dart-noise", type=float, default=d.dart_noise)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--max-frames", type=int, default=d.max_frames,
                    help="training frames per epoch (0 = all)")
    ap.add_argument("--patience", type=int, default=d.patience, help="early stopping (0 = off)")
    ap.add_argument("--val-fraction", type=float, default=d.val_fraction)
    ap.add_argument("--train-extra", default="",
                    help="extra `driving train` options, e.g. '--lr 0.002 --seq-len 16'")
    ap.add_argument("--eval-seed", type=int, default=d.eval_seed)
    ap.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    ap.add_argument("--eval-steps", type=int, default=d.eval_steps)
    ap.add_argument("--conditions", type=_csv, default=",".join(d.conditions),
                    help="evaluation conditions: none and NAME:SEVERITY (noise:3/4/5 = the "
                         "paper's σ² 0.1/0.2/0.3)")
    ap.add_argument("--ssim", type=_csv, default=",".join(d.ssim),
                    help="corruptions for attention SSIM ('' = none)")
    ap.add_argument("--ssim-seeds", type=_ints, default=",".join(map(str, d.ssim_seeds)))
    ap.add_argument("--ssim-steps", type=int, default=d.ssim_steps)
    ap.add_argument("--workers", type=int, default=d.workers,
                    help="processes for recording; evaluation uses workers // jobs per pipeline")
    ap.add_argument("--jobs", type=int, default=d.jobs,
                    help="(policy, seed) pipelines at once (> 1: worker processes, their "
                         "verbs' output in OUT/logs/)")
    ap.add_argument("--docs", default=d.docs, help="where to write the results page")
    ap.add_argument("--data", default="",
                    help="dataset folder (default OUT/data); give another sweep's to share it")
    ap.add_argument("--artefacts", default="",
                    help="folder for the small outputs worth keeping (tables, plots, reports, "
                         "summary.json); default OUT")
    ap.add_argument("--report-only", action="store_true",
                    help="only aggregate the outputs that exist and write the page")
    ap.add_argument("--no-report", action="store_true", help="run the stages, skip the page")
    a = ap.parse_args(argv)
    pols = V1_POLICIES if a.policies in (("all",), "all") else a.policies
    if isinstance(pols, str):
        pols = _csv(pols)
    seeds = _ints(a.seeds) if isinstance(a.seeds, str) else a.seeds
    conds = _csv(a.conditions) if isinstance(a.conditions, str) else a.conditions
    ssim = _csv(a.ssim) if isinstance(a.ssim, str) else a.ssim
    ssim_seeds = _ints(a.ssim_seeds) if isinstance(a.ssim_seeds, str) else a.ssim_seeds
    p = Plan(out=a.out, policies=tuple(pols), seeds=tuple(seeds), env=a.env,
             train_split=a.train_split, test_split=a.test_split, data_seed=a.data_seed,
             episodes=a.episodes, steps=a.steps, dart_noise=a.dart_noise, epochs=a.epochs,
             max_frames=a.max_frames, patience=a.patience, val_fraction=a.val_fraction,
             train_extra=tuple(shlex.split(a.train_extra)), eval_seed=a.eval_seed,
             eval_episodes=a.eval_episodes, eval_steps=a.eval_steps, conditions=tuple(conds), ssim=tuple(ssim), ssim_seeds=tuple(ssim_seeds),
             ssim_steps=a.ssim_steps, workers=a.workers, jobs=a.jobs, docs=a.docs,
             artefacts=a.artefacts, data=a.data)
    return p, a


# ----------------------------------------------------------------------------- protocol v2


def parse_v2(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="reproduce_paper.py --protocol v2|smoke",
        description="Protocol v2 (issue 16): >= 5 seeds, 10 held-out roads x 45 s per condition, "
                    "paired statistics, wiring/smoothing/time controls; every training and every "
                    "(run, condition, road) evaluation is a Ray task (docs/sweep.md).")
    ap.add_argument("--protocol", choices=("v2", "smoke"), required=True)
    ap.add_argument("--out", default="runs/v2", help="where results land (the driver writes them)")
    ap.add_argument("--data", default=None, help="the shared dataset (default OUT/data)")
    ap.add_argument("--artefacts", default="results/v2",
                    help="the page (results.md) and summary.json")
    ap.add_argument("--results-md", default=None,
                    help="also refresh the protocol block of this page (v2 default: docs/results.md)")
    ap.add_argument("--policies", type=_csv, default=None, help="subset, comma list (default all)")
    ap.add_argument("--seeds", type=_ints, default=None, help="training seeds (v2: 0,1,2,3,4)")
    ap.add_argument("--part", default=None, help="K/N: run a round-robin share of the runs")
    ap.add_argument("--ray-address", default=None,
                    help="'auto' or HOST:PORT joins a Ray cluster; none starts a local one")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    for flag, typ in (("--episodes", int), ("--steps", int), ("--epochs", int), ("--max-frames", int),
                      ("--roads", int), ("--eval-steps", int)):
        ap.add_argument(flag, type=typ, default=None, help="override the protocol's value")
    ap.add_argument("--conditions", type=_csv, default=None, help="override the condition list")
    ap.add_argument("--train-extra", default=None, help="override the extra `driving train` options")
    ap.add_argument("--report-only", action="store_true", help="only write the page from OUT")
    ap.add_argument("--no-report", action="store_true", help="run the tasks, skip the page")
    ap.add_argument("--no-noise-measurement", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(list(argv))


def main_v2(raw: Sequence[str], command: str) -> int:
    from driving.sweep import engine
    from driving.sweep import report as v2report
    from driving.sweep.protocol import Layout, protocol

    a = parse_v2(raw)
    if isinstance(a.policies, str):
        a.policies = _csv(a.policies)
    if isinstance(a.seeds, str):
        a.seeds = _ints(a.seeds)
    p = protocol(a.protocol, policies=a.policies, seeds=a.seeds, episodes=a.episodes, steps=a.steps,
                 epochs=a.epochs, max_frames=a.max_frames, roads=a.roads, eval_steps=a.eval_steps,
                 conditions=tuple(a.conditions) if a.conditions else None,
                 train_extra=tuple(shlex.split(a.train_extra)) if a.train_extra is not None else None)
    p.validate()
    lay = Layout.of(a.out, a.data)
    failed = 0
    if not a.report_only:
        r = engine.run_sweep(p, lay.out, lay.data, ray_address=a.ray_address, part=a.part,
                             num_cpus=a.num_cpus, command=command)
        failed = len(r.failed)
        print(f"sweep: finished {r.finished}, already done {r.skipped}, failed {failed}, "
              f"{r.wall_s:.0f} s", file=sys.stderr)
    if not a.no_report:
        results_md = a.results_md or ("docs/results.md" if p.name == "v2" else None)
        page = Path(a.artefacts) / "results.md"
        full = [w for w in shlex.split(command) if w != "--report-only"]
        v2report.report(p, lay, page, shlex.join(full), Path(results_md) if results_md else None,
                        noise=not a.no_noise_measurement)
        print(f"wrote {page}" + (f" and the protocol block of {results_md}" if results_md else ""),
              file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    command = "python scripts/reproduce_paper.py " + shlex.join(raw)
    proto = next((raw[i + 1] for i, w in enumerate(raw[:-1]) if w == "--protocol"), None)
    proto = next((w.split("=", 1)[1] for w in raw if w.startswith("--protocol=")), proto)
    if proto not in (None, "v1"):
        try:
            return main_v2(raw, command)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    raw = [w for i, w in enumerate(raw) if w != "--protocol" and not (i and raw[i - 1] == "--protocol")
           and not w.startswith("--protocol=")]
    try:
        p, a = parse_args(raw)
        p.command = command
        if a.report_only:
            check_plan(p)
        else:
            r = run_all(p)
            if r.failed:
                print(f"failed stages: {', '.join(r.failed)}", file=sys.stderr)
        if not a.no_report:
            report(p, command)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if a.report_only or not r.failed else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run a sweep as Ray tasks: join a cluster or start a local one, resume, collect results.

Every (policy, seed) training, every derived control, every (run, condition, road)
evaluation and every run's passive test (recorded held-out drives) is one Ray task (one
CPU each). The driver submits only what has no result file under OUT, passes checkpoints
between tasks through Ray's object store (no shared filesystem needed), and writes each
result atomically the moment it arrives, so an interrupted sweep loses only the tasks that
were running. ``part='K/N'`` runs a round-robin share of the runs (with the trainings they
need), so a long sweep can be run in pieces on different days or machines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driving.errors import UserError
from driving.sweep import tasks as T
from driving.sweep.protocol import (
    DERIVED,
    EMA_TARGET,
    Layout,
    Protocol,
    check_or_store_fingerprint,
    passive_done,
    runs,
    select_part,
    trainings_needed,
)


@dataclass
class SweepResult:
    submitted: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cluster_cpus: float = 0.0


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("the sweep runs on Ray, which is not installed: pip install "
                        "'liquid-drive[cluster]' (or pip install ray)") from None
    return ray


def init_ray(address: str | None, num_cpus: int | None = None) -> Any:
    """Join the cluster at ``address`` ('auto' or HOST:PORT), or start a local one with one
    CPU slot per core of this machine (``num_cpus`` overrides)."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise UserError(f"cannot join the Ray cluster at --ray-address {address!r}: {exc}; "
                            "start it with `ray start --head` (see docs/sweep.md)") from None
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False)
    return ray


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_result(lay: Layout, res: dict[str, Any]) -> None:
    """One task's result into its place under OUT (atomic; a run's DONE marker last)."""
    from policies.atomicio import atomic_write_json, atomic_write_text

    kind, pol, seed = res["kind"], res["policy"], res["seed"]
    if kind in ("train", "derive"):
        run = lay.run(pol, seed)
        T.write_files(res["files"], run)
        meta = {k: v for k, v in res.items() if k != "files"}
        atomic_write_json(run / "sweep.json", meta)
        if kind == "derive" and res.get("calibration"):
            atomic_write_json(lay.calibration(pol, seed), res["calibration"])
        atomic_write_text(run / "DONE", f"{kind} by driving.sweep in {res['seconds']} s\n")
    elif kind == "eval":
        atomic_write_json(lay.cell(pol, seed, res["condition"], res["road"]), res)
    elif kind == "passive":
        atomic_write_json(lay.passive(pol, seed), res)
    else:
        raise ValueError(f"unknown task result kind {kind!r}")


def _run_payload(lay: Layout, pol: str, seed: int) -> dict[str, Any]:
    return {"files": T._files(lay.run(pol, seed))}


def run_sweep(p: Protocol, out: str | Path, data: str | Path | None = None,
              ray_address: str | None = None, part: str | None = None,
              num_cpus: int | None = None, command: str = "",
              passive_data: str | Path | None = None) -> SweepResult:
    """Submit what is missing of protocol ``p`` (its share ``part``) and collect it under OUT."""
    p.validate()
    lay = Layout.of(out, data, passive_data)
    selected = select_part(runs(p), part)
    check_or_store_fingerprint(p, lay)
    need = trainings_needed(p, selected)
    res = SweepResult()
    ray = init_ray(ray_address, num_cpus)
    res.cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    t0 = time.perf_counter()
    record_r = ray.remote(num_cpus=1)(T.ensure_dataset)
    train_r = ray.remote(num_cpus=1, max_retries=1)(T.train_task)
    derive_r = ray.remote(num_cpus=1, max_retries=1)(T.derive_task)
    eval_r = ray.remote(num_cpus=1, max_retries=1)(T.eval_task)
    record_test_r = ray.remote(num_cpus=1)(T.ensure_test_dataset)
    passive_r = ray.remote(num_cpus=1, max_retries=1)(T.passive_task)
    pending: dict[Any, str] = {}

    def count(d: dict[str, int], k: str) -> None:
        d[k] = d.get(k, 0) + 1

    data_ref = None
    if any(not lay.run_done(q, s) for q, s in need + selected):
        data_ref = record_r.remote(p, str(lay.data))
    refs: dict[tuple[str, int], Any] = {}
    for q, s in need:
        if q in DERIVED:
            continue
        if lay.run_done(q, s):
            refs[(q, s)] = ray.put(_run_payload(lay, q, s))
            count(res.skipped, "train")
        else:
            ref = train_r.remote(p, q, s, str(lay.data), data_ref)
            refs[(q, s)] = ref
            pending[ref] = f"train {q} seed {s}"
            count(res.submitted, "train")
    for q, s in selected:
        if q not in DERIVED or (q, s) in refs:
            continue
        if lay.run_done(q, s):
            refs[(q, s)] = ray.put(_run_payload(lay, q, s))
            count(res.skipped, "derive")
            continue
        target = refs.get((EMA_TARGET, s)) if q in ("cnn-ema", "lstm-ema") else None
        ref = derive_r.remote(p, q, s, str(lay.data), refs[(DERIVED[q], s)], target)
        refs[(q, s)] = ref
        pending[ref] = f"derive {q} seed {s}"
        count(res.submitted, "derive")
    for q, s in selected:
        for c in p.conditions:
            for r in range(p.roads):
                if lay.cell(q, s, c, r).is_file():
                    count(res.skipped, "eval")
                    continue
                ref = eval_r.remote(p, q, s, c, r, refs[(q, s)])
                pending[ref] = f"eval {q} seed {s} {c} road {r}"
                count(res.submitted, "eval")
    # the passive test: one task per run, on drives recorded once per node (each task checks)
    passive = [(q, s) for q, s in selected if not passive_done(p, lay, q, s)]
    count_skipped = len(selected) - len(passive)
    if count_skipped:
        res.skipped["passive"] = count_skipped
    test_ref = record_test_r.remote(p, str(lay.passive_data)) if passive else None
    for q, s in passive:
        ref = passive_r.remote(p, q, s, str(lay.passive_data), refs[(q, s)], test_ref)
        pending[ref] = f"passive {q} seed {s}"
        count(res.submitted, "passive")
    _say(f"{len(selected)} runs in this part; submitted {res.submitted or 'nothing'}, "
         f"already done {res.skipped or 'nothing'}; cluster CPUs {res.cluster_cpus:g}")
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                name = pending.pop(ref)
                try:
                    out_res = ray.get(ref)
                except Exception as exc:  # a failed task must not lose the others' results
                    res.failed.append(name)
                    _say(f"FAIL  {name}: {type(exc).__name__}: {str(exc).splitlines()[-1][:300]}")
                    continue
                write_result(lay, out_res)
                count(res.finished, out_res["kind"])
                if out_res["kind"] != "eval" or sum(res.finished.values()) % 50 == 0:
                    _say(f"done  {name} ({out_res['seconds']:.1f} s); {len(pending)} pending")
    finally:
        res.wall_s = round(time.perf_counter() - t0, 1)
        _log_session(lay, p, res, started, part, ray_address, command)
    return res


def _log_session(lay: Layout, p: Protocol, res: SweepResult, started: str, part: str | None,
                 address: str | None, command: str) -> None:
    from policies.atomicio import atomic_write_json

    f = lay.out / "timings" / "sessions.json"
    try:
        sessions = json.loads(f.read_text()).get("sessions", []) if f.is_file() else []
    except (OSError, json.JSONDecodeError):
        sessions = []
    sessions.append({"started_utc": started, "wall_s": res.wall_s, "part": part,
                     "ray_address": address or "local", "cluster_cpus": res.cluster_cpus,
                     "submitted": res.submitted, "finished": res.finished,
                     "skipped": res.skipped, "failed": res.failed, "command": command,
                     "protocol": p.name, "policies": list(p.policies), "seeds": list(p.seeds)})
    atomic_write_json(f, {"sessions": sessions})

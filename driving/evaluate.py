"""Closed-loop evaluation under corruptions and timing faults → report.json / report.md / plots.

The policy drives the env through the shared closed-loop drive (`driving.rollout`): its
recurrent state is carried from frame to frame, each camera frame is corrupted (using the
env's depth map) before the policy sees it, and an intervention (`driving.interventions`:
collision, off-road, or under the default ``strict`` rule a lane invasion) is counted, the
car put back on the lane centre and the run goes on — the paper counted manual recoveries
the same way. Episodes (condition × episode) are independent tasks; every task's randomness
comes from seeds derived from ``seed``, the condition and the episode index, so the same
seed gives the same report whatever the number of workers. The same episodes (same env
seeds) are used for every condition: conditions are paired. The expert drives the clean
episodes and the timing-fault ones as a reference (image corruptions do not reach it: it
steers from privileged lane state).

Lock-step batching (``batch_episodes`` K > 1): a worker drives K episodes side by side and
runs ONE batched policy step (CNN + core) for all of them; each episode keeps its own env,
corruption stream, recoveries, dropped frames and end, and a finished episode's slot is
refilled with the next task of its chunk. Tasks are cut into fixed chunks in task order
and the policy always runs on K rows (idle rows are padded), so a task's numbers do not
depend on the number of workers.

Timing faults: under ``dropped_frames`` a dropped frame never reaches the policy, which
holds its last action; the next delivered frame comes with the true elapsed time since the
previous delivered one. Under ``jitter`` the world advances by a random interval
(`DrivingEnv.advance`). Policies with ``uses_time`` get the true elapsed seconds; the
others get only the frames.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from driving import corruptions as C
from driving.conditions import CLEAN, Condition, parse_conditions
from driving.interventions import (
    DEFAULT_CAR_WIDTH_M,
    DEFAULT_LANE_INVASION_M,
    DEFAULT_LANE_WIDTH_M,
    RULES,
    STRICT,
    InterventionRule,
)
from driving.metrics import INTERVENTION_PENALTY_S, aggregate, fold_steps, lane_departure_threshold
from driving.rollout import Episode, ExpertActor, PolicyActor, Step, drive
from envs.contract import as_driving_env
from envs.contract import make_env as make_driving_env
from policies.atomicio import atomic_write_json, jsonable
from policies.policy import resolve_device

DEVICES = ("cpu", "cuda", "auto")
#: Episodes a worker drives side by side (scripts/bench_eval.py measured the choice; README).
DEFAULT_BATCH_EPISODES = 8
PRECISIONS = ("fp32", "bf16")


# ------------------------------------------------------------------------------ spec


@dataclass(frozen=True)
class EvalSpec:
    """Everything that determines an evaluation (and so its report).

    ``corruptions`` items are names (every severity of ``severities``) or conditions in the
    `driving.conditions` text form (``fog:3``, ``noise:3-5``); `conditions` is the list.
    """

    checkpoint: str | None
    env_id: str
    env_kwargs: dict = field(default_factory=dict)
    episodes: int = 5
    corruptions: tuple[str, ...] = ("none", "fog", "rain", "noise")
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    steps: int = 300
    seed: int = 0
    expert_reference: bool = True
    intervention: str = "strict"
    lane_invasion_m: float = DEFAULT_LANE_INVASION_M
    batch_episodes: int = DEFAULT_BATCH_EPISODES
    device: str = "cpu"
    precision: str = "fp32"
    # Test hooks: picklable zero-argument callables that build the policy / env instead of
    # loading ``checkpoint`` / ``make_env(env_id)``.
    policy_factory: Callable[[], Any] | None = None
    env_factory: Callable[[], Any] | None = None

    def validate(self) -> None:
        """Every check of the spec, in one place (commands only parse text)."""
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int) or self.episodes < 1:
            raise ValueError(f"episodes must be an integer >= 1, got {self.episodes!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not self.severities:
            raise ValueError("no severities given; e.g. 1,2,3,4,5")
        for s in self.severities:
            C.check_severity(s)
        if not self.corruptions:
            raise ValueError("no corruption given; e.g. none,fog,rain,noise")
        self.conditions  # noqa: B018  (parses and checks every item)
        if self.intervention not in RULES:
            raise ValueError(f"intervention rule {self.intervention!r} does not exist; choose strict or lenient")
        self.rule  # noqa: B018  (checks lane_invasion_m)
        if (isinstance(self.batch_episodes, bool) or not isinstance(self.batch_episodes, int)
                or self.batch_episodes < 1):
            raise ValueError(f"batch_episodes must be an integer >= 1 (episodes driven side by side), "
                             f"got {self.batch_episodes!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} does not exist; choose cpu, cuda or auto")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} does not exist; choose fp32 or bf16")

    @property
    def conditions(self) -> list[Condition]:
        return parse_conditions(",".join(self.corruptions), self.severities)

    @property
    def rule(self) -> InterventionRule:
        return InterventionRule(self.intervention, float(self.lane_invasion_m))


@dataclass(frozen=True)
class Task:
    driver: str  # "policy" or "expert"
    corruption: str
    severity: int
    episode: int

    @property
    def condition(self) -> Condition:
        return CLEAN if self.corruption == "none" else Condition(self.corruption, int(self.severity))


def conditions(spec: EvalSpec) -> list[tuple[str, int]]:
    """(corruption, severity) pairs of the spec, clean first."""
    return [(c.corruption, c.severity) for c in spec.conditions]


def expert_conditions(spec: EvalSpec) -> list[tuple[str, int]]:
    """The expert sees no image corruption: clean plus every requested timing fault."""
    out = [("none", 0)]
    out.extend(c for c in conditions(spec) if c[0] in C.TIMING_FAULTS)
    return out


def tasks(spec: EvalSpec) -> list[Task]:
    out = [Task("policy", c, s, i) for c, s in conditions(spec) for i in range(spec.episodes)]
    if spec.expert_reference:
        out += [Task("expert", c, s, i) for c, s in expert_conditions(spec) for i in range(spec.episodes)]
    return out


def episode_seed(seed: int, episode: int) -> int:
    """Env seed of episode ``episode``: shared by every condition (paired conditions)."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def fault_rng(seed: int, task: Task) -> np.random.Generator:
    """The corruption's random stream for one task (stable across runs and processes)."""
    return np.random.default_rng([seed, task.episode, zlib.crc32(task.corruption.encode()), task.severity])


# ------------------------------------------------------------------------------ drivers

#: The actors of `driving.rollout` under the names evaluation has always used.
PolicyDriver = PolicyActor
ExpertDriver = ExpertActor


# ------------------------------------------------------------------------------ episode


def lane_threshold(info: dict | None = None) -> float:
    """Lane-departure threshold: half lane width minus half car width, from the env's
    ``info["lane_width_m"]`` / ``info["car_width_m"]`` (highway-env defaults otherwise)."""
    info = info or {}
    lane_w = float(info.get("lane_width_m", DEFAULT_LANE_WIDTH_M))
    car_w = float(info.get("car_width_m", DEFAULT_CAR_WIDTH_M))
    return lane_departure_threshold(lane_w, car_w)


def run_episode(
    env: Any,
    driver: Any,
    corruption: str,
    severity: int,
    steps: int,
    env_seed: int,
    rng: np.random.Generator,
    frame_hook: Callable[[np.ndarray], None] | None = None,
    rule: InterventionRule = STRICT,
) -> dict:
    """Drive one closed-loop episode of ``steps`` control steps (`driving.rollout.drive`)
    and fold its steps into per-episode metrics.

    ``frame_hook`` (optional) sees every frame the driver receives (after corruption).
    """
    cond = CLEAN if corruption == "none" else Condition(corruption, int(severity))
    run = drive(as_driving_env(env), driver, steps, seed=env_seed, condition=cond, rng=rng, rule=rule)
    if frame_hook is not None:
        run = _with_hook(run, frame_hook)
    out = fold_steps(run, lambda info: lane_threshold(info))
    out["seed"] = int(env_seed)
    return out


def _with_hook(run, hook: Callable[[np.ndarray], None]):
    for st in run:
        if st.frame is not None:
            hook(st.frame)
        yield st


# ------------------------------------------------------------------------------ batched


def _state_where(mask: Any, new: Any, old: Any) -> Any:
    """Rows of ``new`` where ``mask`` (B,) is True, else rows of ``old`` (tensor or tuple)."""
    import torch

    if isinstance(new, (tuple, list)):
        return type(new)(_state_where(mask, n, o) for n, o in zip(new, old))
    if not isinstance(new, torch.Tensor) or new.dim() == 0 or new.shape[-1] == 0:
        return new
    m = mask.to(new.device).reshape(-1, *([1] * (new.dim() - 1)))
    return torch.where(m, new, old)


class BatchedPolicy:
    """K rows of one policy's recurrent state; one batched `Policy.step` per lock step."""

    def __init__(self, policy: Any, rows: int) -> None:
        import torch

        self.policy, self.rows = policy, int(rows)
        self.uses_time = bool(getattr(policy, "uses_time", False))
        self.h = policy.initial_state(self.rows)
        self._zero = policy.initial_state(self.rows)
        self._torch = torch

    def reset_rows(self, rows: list[int]) -> None:
        if not rows:
            return
        mask = self._torch.zeros(self.rows, dtype=self._torch.bool)
        mask[rows] = True
        self.h = _state_where(mask, self._zero, self.h)

    def act(self, frames: np.ndarray, dts: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Steering for all K rows (frames (K,H,W,3), dts (K,) s); only ``active`` rows'
        state moves on."""
        torch = self._torch
        with torch.no_grad():
            dt = torch.as_tensor(dts, dtype=torch.float32) if self.uses_time else None
            steer, h_new = self.policy.step(frames, self.h, dt)
            mask = torch.as_tensor(active, dtype=torch.bool)
            self.h = _state_where(mask, h_new, self.h)
        return np.asarray(torch.as_tensor(steer, dtype=torch.float32).reshape(-1).cpu(), dtype=np.float64)


def run_chunk_batched(envs: list[Any], policy: Any, chunk: list[Task], spec: EvalSpec) -> list[dict]:
    """Drive a chunk of policy tasks K = len(envs) at a time in lock step; one result per task."""
    k = len(envs)
    batch = BatchedPolicy(policy, k)
    rule = spec.rule
    queue = list(range(len(chunk)))
    slots: list[tuple[int, Episode, list[Step]] | None] = [None] * k
    results: list[dict | None] = [None] * len(chunk)
    hw = None

    def refill(slot: int) -> None:
        if not queue:
            slots[slot] = None
            return
        ti = queue.pop(0)
        t = chunk[ti]
        ep = Episode(envs[slot], spec.steps, seed=episode_seed(spec.seed, t.episode), condition=t.condition,
                     rng=fault_rng(spec.seed, t), rule=rule)
        slots[slot] = (ti, ep, [])

    for s in range(k):
        refill(s)
    batch.reset_rows([s for s in range(k) if slots[s] is not None])
    while any(slot is not None for slot in slots):
        requests = [None if slot is None else slot[1].request() for slot in slots]
        if hw is None:
            first = next(r for r in requests if r is not None)
            hw = first.frame.shape
        frames = np.zeros((k, *hw), dtype=np.uint8)
        dts = np.full(k, 0.1, dtype=np.float32)
        active = np.zeros(k, dtype=bool)
        for s, r in enumerate(requests):
            if r is not None:
                frames[s] = r.frame
                dts[s] = r.dt_s
                active[s] = True
        actions = batch.act(frames, dts, active) if active.any() else np.zeros(k)
        ended: list[int] = []
        for s, slot in enumerate(slots):
            if slot is None:
                continue
            ti, ep, steps = slot
            steps.append(ep.advance(float(actions[s]) if requests[s] is not None else None))
            if ep.done:
                out = fold_steps(steps, lambda info: lane_threshold(info))
                out["seed"] = int(ep.seed)
                results[ti] = out
                refill(s)
                ended.append(s)
        batch.reset_rows([s for s in ended if slots[s] is not None])
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------ workers

_WORKER: dict[str, Any] = {}


def make_env(spec: EvalSpec) -> Any:
    """The spec's env as a checked `envs.contract.DrivingEnv`."""
    if spec.env_factory is not None:
        return as_driving_env(spec.env_factory())
    return make_driving_env(spec.env_id, spec.env_kwargs, max_steps=spec.steps + 1)


def load_policy(spec: EvalSpec) -> tuple[Any, dict]:
    if spec.policy_factory is not None:
        p = spec.policy_factory()
        return p, {"policy": getattr(p, "name", "policy"), "image_hw": list(getattr(p, "image_hw", ()))}
    from policies.checkpoint import load_policy as _load

    policy, config = _load(spec.checkpoint)
    policy.eval()
    device = resolve_device(spec.device)
    if device.type != "cpu":
        policy.to(device)
    if spec.precision == "bf16":
        policy.set_precision("bf16")  # the CNN only; refused where the hardware has no native bf16
    return policy, config


def _init_worker(spec: EvalSpec, rows: int = 1) -> None:
    """A worker's envs (``rows`` of them: the largest batch it will drive), policy, actors."""
    import torch

    torch.set_num_threads(1)
    _WORKER.clear()
    _WORKER["spec"] = spec
    _WORKER["envs"] = [make_env(spec) for _ in range(max(1, rows))]
    policy, _ = load_policy(spec)
    _WORKER["policy"] = policy
    _WORKER["actor"] = PolicyActor(policy)
    _WORKER["expert"] = ExpertActor()


def _run_chunk(item: tuple[int, list[Task]]) -> tuple[int, list[dict]]:
    """One chunk of tasks: policy tasks in lock step (K > 1) or one by one; expert tasks one
    by one (the expert needs no batched network)."""
    index, chunk = item
    spec: EvalSpec = _WORKER["spec"]
    envs = _WORKER["envs"]
    rule = spec.rule
    if spec.batch_episodes > 1 and chunk[0].driver == "policy" and len(chunk) > 1:
        # as many rows as the chunk has tasks (chunks are fixed by task order, so this does
        # not depend on the worker count): a small evaluation pads no idle rows
        return index, run_chunk_batched(envs[:min(len(envs), len(chunk))], _WORKER["policy"], chunk, spec)
    out = []
    for task in chunk:
        driver = _WORKER["actor"] if task.driver == "policy" else _WORKER["expert"]
        out.append(run_episode(envs[0], driver, task.corruption, task.severity, spec.steps,
                               episode_seed(spec.seed, task.episode), fault_rng(spec.seed, task), rule=rule))
    return index, out


def chunks(spec: EvalSpec, task_list: list[Task]) -> list[list[Task]]:
    """Fixed chunks in task order (one driver per chunk), independent of the worker count.

    One task per chunk without batching; with K-episode batching, chunks of 2·K policy tasks
    (refills keep the K rows busy when episodes end at different times) so that several
    workers still share the work of a small evaluation.
    """
    size = 1 if spec.batch_episodes <= 1 else 2 * spec.batch_episodes
    out: list[list[Task]] = []
    for t in task_list:
        if out and len(out[-1]) < size and out[-1][0].driver == t.driver and t.driver == "policy":
            out[-1].append(t)
        else:
            out.append([t])
    return out


def run_tasks(spec: EvalSpec, task_list: list[Task], workers: int = 1, progress: bool = True) -> list[dict]:
    """Run tasks (results in the order of ``task_list``) on ``workers`` processes."""
    from tqdm import tqdm

    bar = tqdm(total=len(task_list), desc="eval episodes", unit="ep", disable=not progress, file=sys.stderr)
    parts = chunks(spec, task_list)
    rows = max((len(c) for c in parts if c[0].driver == "policy"), default=1) if spec.batch_episodes > 1 else 1
    results: list[list[dict] | None] = [None] * len(parts)
    items = list(enumerate(parts))
    try:
        if workers <= 1:
            import torch

            threads = torch.get_num_threads()
            _init_worker(spec, rows)
            try:
                for item in items:
                    i, r = _run_chunk(item)
                    results[i] = r
                    bar.update(len(r))
            finally:
                _WORKER.clear()
                torch.set_num_threads(threads)
        else:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            with ctx.Pool(min(workers, len(items)), initializer=_init_worker, initargs=(spec, rows)) as pool:
                for i, r in pool.imap_unordered(_run_chunk, items, chunksize=1):
                    results[i] = r
                    bar.update(len(r))
    finally:
        bar.close()
    return [r for part in results if part is not None for r in part]


# ------------------------------------------------------------------------------ top level


def check_camera(env: Any, image_hw: Any, env_id: str) -> None:
    """The checkpoint's camera size must be the env's, or the CNN sees the wrong image."""
    if not image_hw:
        return
    want = tuple(int(v) for v in image_hw)
    got = tuple(as_driving_env(env).image_hw)
    if got != want:
        raise ValueError(
            f"env {env_id} renders {got[0]}x{got[1]} frames but the checkpoint was trained on "
            f"{want[0]}x{want[1]}; pass --env-config '{{\"camera\": {{\"height\": {want[0]}, "
            f"\"width\": {want[1]}}}}}' (or evaluate on the env it was trained on)"
        )


def contact_frame(spec: EvalSpec, env: Any, warmup_steps: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """A representative clean frame and its depth: episode 0, after the expert drove a bit."""
    ep = Episode(as_driving_env(env), warmup_steps, seed=episode_seed(spec.seed, 0), rule=spec.rule)
    expert = ExpertActor()
    while not ep.done:
        req = ep.request()
        ep.advance(None if req is None else expert.act(req.frame, req.dt_s, req.info))
    return np.array(ep.obs["image"]), np.array(ep.info["depth"], dtype=np.float32)


def build_report(spec: EvalSpec, policy_name: str, task_list: list[Task], results: list[dict],
                 threshold_m: float) -> dict:
    """Aggregate per-episode results into the report.json structure (docs/evaluation.md, Outputs)."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for t, r in zip(task_list, results):
        groups.setdefault((t.driver, t.corruption, t.severity), []).append(r)
    rows = [aggregate(c, s, groups[("policy", c, s)]) for c, s in conditions(spec)]
    report: dict[str, Any] = {
        "policy": policy_name,
        "checkpoint": str(spec.checkpoint) if spec.checkpoint else None,
        "env": spec.env_id,
        "results": rows,
    }
    if spec.expert_reference:
        report["reference"] = {
            "policy": "expert",
            "results": [aggregate(c, s, groups[("expert", c, s)]) for c, s in expert_conditions(spec)],
        }
    report["settings"] = {
        "episodes": spec.episodes,
        "steps": spec.steps,
        "seed": spec.seed,
        "env_kwargs": spec.env_kwargs,
        "episode_seeds": [episode_seed(spec.seed, i) for i in range(spec.episodes)],
        "corruptions": list(spec.corruptions),
        "severities": list(spec.severities),
        "conditions": [c.label() for c in spec.conditions],
        "lane_departure_threshold_m": threshold_m,
        **spec.rule.settings(),
        "intervention_penalty_s": INTERVENTION_PENALTY_S,
        "batch_episodes": spec.batch_episodes,
        "precision": spec.precision,
        "definitions": "docs/evaluation.md",
    }
    return jsonable(report)


def write_json_atomic(path: Path, obj: Any) -> None:
    """report.json and friends: atomic, indented, never NaN (`policies.atomicio`)."""
    atomic_write_json(path, obj)


def evaluate(spec: EvalSpec, out_dir: str | os.PathLike, workers: int = 1, progress: bool = True,
             plots: bool = True) -> dict:
    """Run the evaluation described by ``spec`` and write report.json, report.md, plots and
    the contact sheet into ``out_dir``. Returns the report dict."""
    from driving import report as R

    spec.validate()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    policy, config = load_policy(spec)
    env = make_env(spec)
    cfg = env.config
    if (spec.env_factory is None and cfg.get("split") is not None
            and "split" not in spec.env_kwargs):
        # Score on held-out roads unless the user asks otherwise (--env-config '{"split": ...}').
        _close(env)
        spec = replace(spec, env_kwargs={**spec.env_kwargs, "split": "test"})
        env = make_env(spec)
    try:
        check_camera(env, config.get("image_hw") or getattr(policy, "image_hw", None), spec.env_id)
        _, info0 = env.reset(seed=episode_seed(spec.seed, 0))
        threshold = lane_threshold(info0)
        sheet_frame = contact_frame(spec, env) if plots else None
    finally:
        _close(env)
    del policy
    task_list = tasks(spec)
    results = run_tasks(spec, task_list, workers=workers, progress=progress)
    report = build_report(spec, str(config.get("policy", "policy")), task_list, results, threshold)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    R.write_markdown(report, out / "report.md")
    if plots and sheet_frame is not None:
        R.plot_report(report, out)
        # Every image corruption (not only the evaluated ones): a cheap, complete overview.
        R.save_contact_sheet(out / "contact_sheet.png", sheet_frame[0], sheet_frame[1],
                             list(C.CORRUPTIONS), seed=spec.seed)
    return report


def env_slug(env_id: str) -> str:
    """A folder name for an env id: ``liquid_drive/RandomRoad-v0`` → ``RandomRoad-v0``."""
    return env_id.rsplit("/", 1)[-1].replace(":", "-")


SUMMARY_COLUMNS = ("distance_m", "mean_abs_cross_track_m", "crashes", "completion_pct", "autonomy_pct")


def evaluate_envs(spec: EvalSpec, env_ids: list[str], out_dir: str | os.PathLike, workers: int = 1,
                  progress: bool = True, plots: bool = True) -> dict:
    """`evaluate` on every env (same settings, same seeds): OUT/<env>/report.json each, plus
    OUT/summary.json and OUT/summary.md, one row per (env, condition)."""
    if not env_ids:
        raise ValueError("no env ids given")
    out = Path(out_dir)
    slugs = [env_slug(e) for e in env_ids]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"env ids {env_ids} map to the same folder names {slugs}; give distinct ids")
    reports = {}
    for env_id, slug in zip(env_ids, slugs):
        if progress:
            print(f"eval on {env_id} → {out / slug}", file=sys.stderr)
        reports[env_id] = evaluate(replace(spec, env_id=env_id), out / slug, workers=workers,
                                   progress=progress, plots=plots)
    rows = []
    for env_id, rep in reports.items():
        for r in rep["results"]:
            rows.append({"env": env_id, "corruption": r["corruption"], "severity": r["severity"],
                         "episodes": r["episodes"], **{k: r[k] for k in SUMMARY_COLUMNS},
                         "intervention_causes": r.get("intervention_causes")})
    lines = [f"# {reports[env_ids[0]]['policy']} on {len(env_ids)} envs",
             "",
             f"{spec.episodes} episodes × {spec.steps} steps per condition, seed {spec.seed}, "
             f"intervention rule {spec.intervention}"
             + (f" (lane invasion > {spec.lane_invasion_m} m)" if spec.intervention == "strict" else "") + ".",
             "",
             "| env | condition | distance m | mean \\|cross-track\\| m | interventions | completion % | autonomy % |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cond = "clean" if r["corruption"] == "none" else f"{r['corruption']} {r['severity']}"
        lines.append(f"| {env_slug(r['env'])} | {cond} | {r['distance_m']:,.0f} | "
                     f"{r['mean_abs_cross_track_m']:.3f} | {r['crashes']} | {r['completion_pct']:.1f} | "
                     f"{r['autonomy_pct']:.1f} |")
    markdown = "\n".join(lines) + "\n"
    summary = {"policy": reports[env_ids[0]]["policy"], "checkpoint": reports[env_ids[0]]["checkpoint"],
               "envs": env_ids, "reports": {e: f"{s}/report.json" for e, s in zip(env_ids, slugs)},
               "rows": rows, "settings": reports[env_ids[0]]["settings"]}
    atomic_write_json(out / "summary.json", summary)
    from policies.atomicio import atomic_write_text

    atomic_write_text(out / "summary.md", markdown)
    return {**summary, "markdown": markdown}


def _close(env: Any) -> None:
    close = getattr(env, "close", None)
    if callable(close):
        close()


__all__ = ["EvalSpec", "Task", "evaluate", "run_episode", "tasks", "conditions", "episode_seed",
           "run_chunk_batched", "BatchedPolicy"]

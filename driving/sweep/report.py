"""The v2 results page: paired statistics over the (seed, road) cells, tables, findings.

Everything on the page is computed from OUT (the cells, the runs, the calibrations, the
passive tests, the sessions) plus two measurements made here because they are properties of
the setup, not of a policy: parameter counts (built from the factory) and the realised noise
variance (rendered test-road frames, the evaluator's noise corruption). Findings are sentences
generated from the numbers: a difference is called one only when its bootstrap interval
excludes 0; everything else is said to show no difference.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from driving import stats as ST
from driving.sweep.protocol import (
    REFERENCES,
    Layout,
    Protocol,
    passive_conditions,
    passive_settings,
    run_name,
)

#: (row key, label, higher is better, tie tolerance, format). The first is the primary one.
METRICS = (
    ("crashes", "interventions / episode", False, 0.0, "{:.2f}"),
    ("autonomy_pct", "autonomy %", True, 0.05, "{:.1f}"),
    ("completion_pct", "route completion %", True, 0.05, "{:.1f}"),
    ("mean_abs_cross_track_m", "mean |cross-track| (m)", False, 0.005, "{:.3f}"),
    ("steering_rate", "steering rate (1/s)", False, 0.0005, "{:.3f}"),
)
CONTINUOUS = ("ncp-ltc", "ncp-cfc", "ctrnn", "ltc-random", "ltc-full", "cfc-random", "cfc-full",
              "ncp-random", "ncp-full")
DISCRETE = ("lstm", "gru", "cnn", "lstm-ema", "cnn-ema")
V2_BEGIN, V2_END = "<!-- protocol-v2:begin -->", "<!-- protocol-v2:end -->"


def load_cells(p: Protocol, lay: Layout) -> dict[str, dict[str, dict[tuple[int, int], dict]]]:
    """cells[policy][condition][(seed, road)] = the report row of that episode."""
    out: dict[str, dict[str, dict[tuple[int, int], dict]]] = {}
    for pol in p.policies:
        for s in p.seeds:
            for c in p.conditions:
                for r in range(p.roads):
                    f = lay.cell(pol, s, c, r)
                    if not f.is_file():
                        continue
                    try:
                        row = json.loads(f.read_text())["row"]
                    except (OSError, json.JSONDecodeError, KeyError):
                        continue
                    out.setdefault(pol, {}).setdefault(c, {})[(s, r)] = row
    return out


def _values(cells: dict[tuple[int, int], dict], key: str) -> dict[tuple[int, int], float]:
    return {k: float(v[key]) for k, v in cells.items() if v.get(key) is not None
            and math.isfinite(float(v[key]))}


def _mean(cells: dict[tuple[int, int], dict], key: str) -> float | None:
    v = list(_values(cells, key).values())
    return float(np.mean(v)) if v else None


def load_passive(p: Protocol, lay: Layout) -> tuple[dict[str, dict[int, dict]], list[str]]:
    """passive[policy][seed] = the passive task's result, only those made with the protocol's
    passive settings; and the runs whose result was made with other settings (left out)."""
    want = passive_settings(p)
    out: dict[str, dict[int, dict]] = {}
    stale: list[str] = []
    for pol in p.policies:
        for s in p.seeds:
            f = lay.passive(pol, s)
            if not f.is_file():
                continue
            try:
                res = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if res.get("settings") != want:
                stale.append(run_name(pol, s))
                continue
            out.setdefault(pol, {})[s] = res
    return out, stale


def _over_seeds(by_seed: dict[int, float]) -> dict[str, Any]:
    """Mean over seeds with the Student-t 95% interval over seeds (None below 2 seeds)."""
    from driving.metrics import mean_ci95

    seeds = sorted(k for k, v in by_seed.items() if v is not None and math.isfinite(v))
    m, lo, hi = mean_ci95([by_seed[k] for k in seeds])
    return {"mean": m if seeds else None, "ci95": None if lo is None else [lo, hi], "n": len(seeds),
            "seeds": seeds, "per_seed": {str(k): by_seed[k] for k in seeds}}


def passive_summary(p: Protocol, lay: Layout) -> dict[str, Any]:
    """The offline table (steering MSE per condition, over seeds), the constant-prediction
    floor and the attention SSIM per image corruption, from OUT/passive/*.json."""
    from driving import corruptions as C
    from driving.sweep.tasks import condition_of

    results, stale = load_passive(p, lay)
    conds = passive_conditions(p)
    image = [c for c in conds if c.partition(":")[0] in C.CORRUPTIONS and c != "none"]
    table: dict[str, dict[str, dict]] = {}
    ssim: dict[str, dict[str, dict]] = {}
    floor: dict[int, float] = {}
    for pol, by_seed in results.items():
        rows = {s: {condition_of(r): r for r in res["report"]["results"]} for s, res in by_seed.items()}
        for s, res in by_seed.items():
            floor.setdefault(s, float(res["report"]["reference"]["constant_mse"]))
        for c in conds:
            cell = {k: _over_seeds({s: rr[c].get(k) for s, rr in rows.items() if c in rr})
                    for k in ("steering_mse", "steering_mae", "steering_corr")}
            table.setdefault(pol, {})[c] = cell["steering_mse"] | {
                "steering_mae": cell["steering_mae"]["mean"], "steering_corr": cell["steering_corr"]["mean"]}
        for c in image:
            ssim.setdefault(pol, {})[c] = _over_seeds(
                {s: rr[c].get("attention_ssim") for s, rr in rows.items() if c in rr})
    consts = sorted(set(round(v, 12) for v in floor.values()))
    return {"settings": passive_settings(p), "conditions": conds, "image_conditions": image,
            "runs_done": sum(len(v) for v in results.values()),
            "runs_planned": len(p.policies) * len(p.seeds), "stale": stale,
            "constant_mse": consts[0] if len(consts) == 1 else (float(np.mean(consts)) if consts else None),
            "constant_mse_values": consts, "steering_mse": table, "attention_ssim": ssim}


def measure_noise(p: Protocol, frames: int = 8, seed: int = 0) -> list[dict[str, float]]:
    """Realised variance of the noise corruption's pixel error on rendered test-road frames
    (after clipping to [0, 1]), beside the nominal σ², and the share of saturated pixels."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers liquid_drive/*)
    from driving import corruptions as C

    env = gym.make(p.env, **({"split": p.test_split} if p.test_split else {}))
    shots = []
    try:
        for k in range(frames):
            obs, info = env.reset(seed=p.road_seed + k)
            shots.append((np.asarray(obs["image"]), np.asarray(info["depth"])))
    finally:
        env.close()
    rng = np.random.default_rng(seed)
    rows = []
    for sev in (3, 4, 5):
        err, sat = [], []
        for f, d in shots:
            g = C.apply("noise", f, d, sev, rng)
            err.append((g.astype(np.float64) - f.astype(np.float64)).ravel() / 255.0)
            sat.append(np.mean((g == 0) | (g == 255)))
        e = np.concatenate(err)
        nominal = float(C.NOISE_VARIANCE[sev - 1]) if hasattr(C, "NOISE_VARIANCE") else float("nan")
        rows.append({"severity": sev, "nominal_variance": nominal, "realised_variance": float(e.var()),
                     "mean_error": float(e.mean()), "saturated_share": float(np.mean(sat)),
                     "frames": len(shots)})
    return rows


def parameter_rows(policies: Sequence[str]) -> list[dict[str, Any]]:
    from policies.controls import parameter_table
    from policies.factory import build_policy

    return [parameter_table(build_policy(n)) for n in policies]


def paired_table(p: Protocol, cells: dict, key: str, higher: bool, tol: float,
                 reference: str) -> dict[str, dict[str, dict]]:
    """paired[policy][condition] = `driving.stats.PairedResult.to_dict()` vs ``reference``."""
    out: dict[str, dict[str, dict]] = {}
    roads = list(range(p.roads))
    for pol in p.policies:
        if pol == reference or pol not in cells or reference not in cells:
            continue
        for c in p.conditions:
            a, b = cells[pol].get(c, {}), cells[reference].get(c, {})
            if not a or not b:
                continue
            r = ST.paired(_values(a, key), _values(b, key), list(p.seeds), roads, policy=pol,
                          reference=reference, higher_is_better=higher, tol=tol, n_boot=p.n_boot,
                          seed=0)
            out.setdefault(pol, {})[c] = r.to_dict()
    return out


def robustness(p: Protocol, cells: dict, baseline: str = "cnn") -> dict[str, Any]:
    """mCE (error = 100 − autonomy %, relative to ``baseline``) and mRR (autonomy %)."""
    errors: dict[str, dict[str, dict[int, float]]] = {}
    scores: dict[str, dict[str, dict[int, float]]] = {}
    clean: dict[str, float] = {}
    for pol, by_c in cells.items():
        for c, cc in by_c.items():
            m = _mean(cc, "autonomy_pct")
            if m is None:
                continue
            if c == "none":
                clean[pol] = m
                continue
            name, _, sev = c.partition(":")
            errors.setdefault(pol, {}).setdefault(name, {})[int(sev)] = 100.0 - m
            scores.setdefault(pol, {}).setdefault(name, {})[int(sev)] = m
    out: dict[str, Any] = {"baseline": baseline, "mce": {}, "mrr": ST.resilience_rates(scores, clean)}
    if baseline in errors:
        out["mce"] = ST.corruption_errors(errors, baseline)
    return out


def summarise(p: Protocol, lay: Layout, noise: bool = True) -> dict[str, Any]:
    cells = load_cells(p, lay)
    table = {pol: {c: {k: _mean(cc, k) for k, *_ in METRICS} | {"cells": len(cc)}
                   for c, cc in by_c.items()} for pol, by_c in cells.items()}
    key, _, higher, tol, _ = METRICS[0]
    paired = {ref: paired_table(p, cells, key, higher, tol, ref) for ref in REFERENCES}
    paired_cte = {ref: paired_table(p, cells, "mean_abs_cross_track_m", False, 0.005, ref)
                  for ref in REFERENCES}
    calib = {}
    for pol in p.policies:
        for s in p.seeds:
            f = lay.calibration(pol, s)
            if f.is_file() and pol in ("cnn-ema", "lstm-ema"):
                calib[run_name(pol, s)] = json.loads(f.read_text())
    trained = {}  # every run under OUT, also those only trained for another (e.g. cnn for cnn-ema)
    for f in sorted((lay.out / "runs").glob("*/sweep.json")):
        trained[f.parent.name] = json.loads(f.read_text())
    secs: dict[str, list[float]] = {}
    for pol, by_c in cells.items():
        for c in by_c:
            for s in p.seeds:
                for r in range(p.roads):
                    f = lay.cell(pol, s, c, r)
                    if f.is_file():
                        cell = json.loads(f.read_text())
                        secs.setdefault("eval", []).append(cell["seconds"])
                        if "cpu_seconds" in cell:
                            secs.setdefault("eval cpu", []).append(cell["cpu_seconds"])
    for meta in trained.values():
        secs.setdefault(meta["kind"], []).append(meta["seconds"])
        if "cpu_seconds" in meta:
            secs.setdefault(f"{meta['kind']} cpu", []).append(meta["cpu_seconds"])
    for by_seed in load_passive(p, lay)[0].values():
        for res in by_seed.values():
            secs.setdefault("passive", []).append(res["seconds"])
            if "cpu_seconds" in res:
                secs.setdefault("passive cpu", []).append(res["cpu_seconds"])
    f = lay.out / "timings" / "sessions.json"
    sessions = json.loads(f.read_text()).get("sessions", []) if f.is_file() else []
    return {
        "protocol": p.name, "fingerprint": p.fingerprint(), "id": p.fingerprint_id(),
        "policies": list(p.policies), "seeds": list(p.seeds), "conditions": list(p.conditions),
        "table": table, "paired_interventions": paired, "paired_cte": paired_cte,
        "robustness": robustness(p, cells), "calibration": calib,
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "calibration"} for k, v in trained.items()},
        "task_seconds": {k: {"n": len(v), "mean": float(np.mean(v)), "sum": float(np.sum(v))}
                         for k, v in secs.items() if v},
        "sessions": sessions,
        "cells_done": sum(len(cc) for by_c in cells.values() for cc in by_c.values()),
        "cells_planned": len(p.policies) * len(p.seeds) * len(p.conditions) * p.roads,
        "parameters": parameter_rows(p.policies),
        "noise": measure_noise(p) if noise else [],
        "passive": passive_summary(p, lay),
    }


# ----------------------------------------------------------------------------- page


def _fmt(v: float | None, fmt: str) -> str:
    return "–" if v is None or not math.isfinite(v) else fmt.format(v)


def _pair_cell(d: dict | None, fmt: str) -> str:
    if not d or d.get("mean_diff") is None:
        return "–"
    lo, hi = d["ci95"]
    mark = {"better": " ✓", "worse": " ✗"}.get(d["verdict"], "")
    return (f"{fmt.format(d['mean_diff'])} [{fmt.format(lo)}, {fmt.format(hi)}]{mark} "
            f"{d['wins']}/{d['ties']}/{d['losses']}")


def findings(p: Protocol, s: dict[str, Any]) -> list[str]:
    """Sentences from the numbers; a difference only where its interval excludes 0."""
    L: list[str] = []
    corrupted = [c for c in p.conditions if c != "none"]
    for ref in REFERENCES:
        pt = s["paired_interventions"].get(ref, {})
        if not pt:
            continue
        for pol, by_c in pt.items():
            better = [c for c in corrupted if by_c.get(c, {}).get("verdict") == "worse"]
            worse = [c for c in corrupted if by_c.get(c, {}).get("verdict") == "better"]
            shown = [c for c in corrupted if c in by_c]
            if not shown:
                continue
            part = [f"**{ref} vs {pol}** (interventions, {len(shown)} corrupted conditions): "
                    f"{ref} fewer in {len(better)}"]
            if better:
                part.append(f" ({', '.join(better)})")
            part.append(f", more in {len(worse)}")
            if worse:
                part.append(f" ({', '.join(worse)})")
            part.append(f", no difference shown in {len(shown) - len(better) - len(worse)}.")
            L.append("".join(part))
    pt = s["paired_interventions"].get("ncp-ltc", {})
    for ctl, what in (("ltc-random", "random layered wiring, same cell and schedule"),
                      ("ltc-full", "fully connected layers, same cell and schedule"),
                      ("cnn-ema", "CNN with the matched moving average"),
                      ("lstm-ema", "LSTM with the matched moving average"),
                      ("ncp-ltc-timeblind", "the same NCP-LTC given the nominal Δt")):
        by_c = pt.get(ctl)
        if not by_c:
            continue
        noisy = [c for c in ("noise:3", "noise:4", "noise:5", "dropped_frames:2", "dropped_frames:4",
                             "jitter:2", "jitter:4") if c in by_c]
        bits = [f"{c}: {by_c[c]['mean_diff']:+.2f} [{by_c[c]['ci95'][0]:+.2f}, {by_c[c]['ci95'][1]:+.2f}]"
                for c in noisy]
        if bits:
            L.append(f"Control **{ctl}** ({what}), interventions minus NCP-LTC's: " + "; ".join(bits)
                     + " (positive = the control intervenes more).")
    mce = s["robustness"].get("mce", {})
    if mce:
        ranked = sorted((v["mce"], k) for k, v in mce.items() if v["mce"] is not None)
        if ranked:
            L.append("mCE relative to the CNN (lower is more robust): "
                     + ", ".join(f"{k} {v:.2f}" for v, k in ranked) + ".")
    if not L:
        L.append("No paired comparison has finished cells yet.")
    return L


def _seed_cell(d: dict | None, fmt: str) -> str:
    """mean ± half the 95% interval over seeds (n = seeds); the mean alone for one seed."""
    if not d or d.get("mean") is None:
        return "–"
    ci = d.get("ci95")
    half = f" ± {fmt.format((ci[1] - ci[0]) / 2)}" if ci else ""
    return f"{fmt.format(d['mean'])}{half} (n={d['n']})"


def passive_section(p: Protocol, ps: dict[str, Any] | None) -> list[str]:
    """The page's passive-test section: the offline table and attention SSIM on test roads."""
    if not ps:
        return []
    st, conds = ps["settings"], ps["conditions"]
    heads = ["clean" if c == "none" else c for c in conds]
    L = ["", "## Passive test (held-out recorded test drives)", "",
         f"Every run watches the same {st['episodes']} recorded expert drives × at most "
         f"{st['steps']} frames on `{st['env']}` split `{st['split']}` (env seeds {st['seed']}.."
         f"{st['seed'] + st['episodes'] - 1}: roads and looks training never draws; no DART noise, "
         "so the label is the expert's steering; depth recorded, so fog is real fog), its state "
         "carried and the recorded Δt given; nothing is driven, so every policy sees exactly the "
         "same frames and corruption streams. Steering MSE against the label over all frames, mean "
         "over training seeds ± half the 95 % t interval over seeds (from 2 seeds), n = seeds in "
         "the cell. "
         + ("jitter is not run (it changes when a simulator samples the world; recorded footage "
            "has fixed sample times). " if len(conds) < len(p.conditions) else "")
         + "Dropped frames hold the last steering. The last row always predicts the mean label: "
         "a policy must beat it to have learnt anything.", "",
         f"Runs with a passive result: {ps['runs_done']} of {ps['runs_planned']}."]
    if ps["stale"]:
        L.append(f"Left out (made with other passive settings): {', '.join(ps['stale'])}.")
    if not ps["runs_done"]:
        return L
    L += ["", "| policy | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(conds)]
    for pol in p.policies:
        t = ps["steering_mse"].get(pol)
        if t:
            L.append(f"| {pol} | " + " | ".join(_seed_cell(t.get(c), "{:.4f}") for c in conds) + " |")
    if ps["constant_mse"] is not None:
        L.append("| constant prediction (floor) | " + " | ".join(f"{ps['constant_mse']:.4f}" for _ in conds) + " |")
    L += ["", "### Attention SSIM on test roads", ""]
    image = ps["image_conditions"]
    if not image:
        L.append("The protocol has no image corruption, so no attention SSIM.")
        return L
    L += [f"SSIM of the VisualBackProp attention map on the clean vs the corrupted frame, on "
          f"{st['ssim_frames']} frames spread evenly over the test drives, mean over training seeds "
          "(± half the 95 % interval over seeds from 2 seeds; n = seeds): 1 = the corruption leaves "
          "the attention where it was.", "",
          "| policy | " + " | ".join(image) + " |", "|---|" + "---:|" * len(image)]
    for pol in p.policies:
        t = ps["attention_ssim"].get(pol)
        if t:
            L.append(f"| {pol} | " + " | ".join(_seed_cell(t.get(c), "{:.3f}") for c in image) + " |")
    return L


def write_page(p: Protocol, s: dict[str, Any], page: Path, command: str) -> str:
    conds = list(p.conditions)
    L = [f"# Protocol {p.name}: the paper's comparison with paired statistics and controls", "",
         f"Generated by `scripts/reproduce_paper.py --protocol {p.name}` from `{s.get('out', 'OUT')}`; "
         "every number below is recomputed by the command in *What ran*.", "",
         "## What ran", "",
         f"- **Command**: `{command}`",
         f"- **Data**: {p.episodes} expert drives × {p.steps} frames on `{p.env}` (split "
         f"`{p.train_split}`, data seed {p.data_seed}, DART σ {p.dart_noise}), one dataset for all.",
         f"- **Training**: {p.epochs} epochs of at most {p.max_frames} frames, "
         f"`{' '.join(p.train_extra)}`, seeds {', '.join(map(str, p.seeds))}; "
         "cnn-ema / lstm-ema / ncp-ltc-timeblind reuse the cnn / lstm / ncp-ltc weights of the same seed.",
         f"- **Evaluation**: {p.roads} held-out roads (split `{p.test_split}`, evaluation seeds "
         f"{p.road_seed}..{p.road_seed + p.roads - 1}) × {p.eval_steps} steps "
         f"({p.eval_steps / 10:.0f} s at 10 Hz) per condition, `{p.intervention}` interventions; "
         "every policy and seed drives the same roads, starts, traffic and corruption streams.",
         f"- **Conditions**: {', '.join(conds)}.",
         f"- **Cells finished**: {s['cells_done']} of {s['cells_planned']} (policy, seed, condition, road).",
         ]
    for k, v in s["task_seconds"].items():
        what = "CPU" if k.endswith(" cpu") else "wall clock"
        L.append(f"- **{k.removesuffix(' cpu')} tasks, {what}**: {v['n']} done, {v['mean']:.1f} s "
                 f"each on average ({v['sum'] / 3600:.2f} hours in all)")
    if s["sessions"]:
        L.append(f"- **Sessions**: {len(s['sessions'])}, {sum(x['wall_s'] for x in s['sessions']) / 60:.1f} "
                 "min wall clock in all; parts: "
                 + ", ".join(str(x.get("part") or "all") for x in s["sessions"]))
    L += ["", "## Findings (generated from the numbers below)", ""]
    L += [f"- {x}" for x in findings(p, s)]
    key, label, higher, _, fmt = METRICS[0]
    for ref in REFERENCES:
        pt = s["paired_interventions"].get(ref)
        if not pt:
            continue
        L += ["", f"## Paired differences in {label}: policy − {ref}", "",
              f"Mean over (seed, road) cells, [bootstrap 95% interval resampling seeds and roads], "
              f"then wins/ties/losses of the policy over the cells (ties named as ties: equal "
              f"counts). ✓ = the policy is better than {ref} (interval excludes 0), ✗ = worse.", "",
              "| policy | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
        for pol in p.policies:
            if pol in pt:
                L.append(f"| {pol} | " + " | ".join(_pair_cell(pt[pol].get(c), fmt) for c in conds) + " |")
    for key, label, higher, _, fmt in METRICS:
        L += ["", f"## {label} ({'higher' if higher else 'lower'} is better), mean over cells", "",
              "| policy | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
        for pol in p.policies:
            t = s["table"].get(pol)
            if t:
                L.append(f"| {pol} | " + " | ".join(_fmt(t.get(c, {}).get(key), fmt) for c in conds) + " |")
    rob = s["robustness"]
    if rob.get("mce") or rob.get("mrr"):
        L += ["", "## Robustness summary (mCE relative to the CNN, mRR)", "",
              "Error = 100 − autonomy %; CE = Σ severities of the error / the CNN's; mCE = mean "
              "over corruptions (a corruption where the CNN made no error has no CE). RR = "
              "corrupted ÷ clean autonomy; mRR = mean over corruptions.", "",
              "| policy | mCE | mRR | CE undefined for |", "|---|---:|---:|---|"]
        for pol in p.policies:
            m = rob.get("mce", {}).get(pol, {})
            r = rob.get("mrr", {}).get(pol, {})
            if m or r:
                L.append(f"| {pol} | {_fmt(m.get('mce'), '{:.2f}')} | {_fmt(r.get('mrr'), '{:.2f}')} | "
                         f"{', '.join(m.get('undefined', [])) or '–'} |")
    timing = [c for c in conds if c.split(":")[0] in ("dropped_frames", "jitter")]
    if timing:
        L += ["", "## Timing faults: interventions / episode", "",
              "Continuous-time models get the true Δt; `ncp-ltc-timeblind` is NCP-LTC's weights "
              "given the nominal Δt; discrete models never see time.", "",
              "| policy | kind | clean | " + " | ".join(timing) + " |", "|---|---|---:|" + "---:|" * len(timing)]
        for pol in p.policies:
            t = s["table"].get(pol)
            if not t:
                continue
            kind = ("time-blind" if pol == "ncp-ltc-timeblind" else
                    "continuous, true Δt" if pol in CONTINUOUS else "discrete")
            L.append(f"| {pol} | {kind} | {_fmt(t.get('none', {}).get('crashes'), '{:.2f}')} | "
                     + " | ".join(_fmt(t.get(c, {}).get("crashes"), "{:.2f}") for c in timing) + " |")
    L += passive_section(p, s.get("passive"))
    if s["calibration"]:
        L += ["", "## Smoothing controls: matched time constants", "",
              "τ chosen so that the control's open-loop steering rate on recorded drives equals the "
              "same-seed NCP-LTC's; closed-loop clean steering rates are in the steering-rate table.", "",
              "| run | τ (s) | NCP-LTC rate | raw rate | filtered rate |", "|---|---:|---:|---:|---:|"]
        for k, v in sorted(s["calibration"].items()):
            L.append(f"| {k} | {v['ema_tau_s']:.3f} | {v['target_rate']:.3f} | {v['raw_rate']:.3f} | "
                     f"{v['filtered_rate']:.3f} |")
    if s["noise"]:
        L += ["", "## Noise: nominal and realised variance", "",
              "Variance of (noisy − clean) pixel values on [0, 1], after clipping, measured on "
              f"{s['noise'][0]['frames']} rendered test-road frames.", "",
              "| severity | nominal σ² | realised variance | mean error | saturated pixels |",
              "|---:|---:|---:|---:|---:|"]
        for r in s["noise"]:
            L.append(f"| {r['severity']} | {r['nominal_variance']:.2f} | {r['realised_variance']:.3f} | "
                     f"{r['mean_error']:+.3f} | {100 * r['saturated_share']:.0f}% |")
    L += ["", "## Parameter counts", "",
          "**Effective** = weights that can change the steering; **storage** = entries held "
          "(a wired CfC stores dense matrices and masks most of them). Every policy has the same "
          "79,420-parameter perception CNN.", "",
          "| policy | effective | storage | core effective | core storage | synapses (+ sensory) | wiring |",
          "|---|---:|---:|---:|---:|---|---|"]
    for r in s["parameters"]:
        syn = "–" if r["synapses"] is None else f"{r['synapses']} + {r['sensory_synapses']}"
        L.append(f"| {r['policy']} | {r['effective']:,} | {r['storage']:,} (storage) | "
                 f"{r['core_effective']:,} | {r['core_storage']:,} (storage) | {syn} | {r['wiring'] or '–'} |")
    L.append("")
    text = "\n".join(L)
    from policies.atomicio import atomic_write_text

    atomic_write_text(page, text)
    return text


def update_results_section(results_md: Path, page: Path, p: Protocol, s: dict[str, Any],
                           command: str) -> None:
    """Refresh the protocol-v2 block of docs/results.md (between its markers) with the
    headline lines and a link; the rest of the page (the v1 history) is left as it is."""
    from policies.atomicio import atomic_write_text

    rel = os.path.relpath(page, results_md.parent)
    block = [V2_BEGIN, f"## Protocol {p.name} (issue 16): paired, ≥ 5 seeds, controls", "",
             f"The full page: [{rel}]({rel}). Regenerate with `{command}` (resumable; "
             "`--part K/N` runs a share; how it runs on one machine or a Ray cluster and what "
             f"each task costs: [sweep.md]({os.path.relpath('docs/sweep.md', results_md.parent)})).",
             "",
             f"{len(p.policies)} policies (the v1 eight plus layered wiring controls for both cells, "
             "smoothing controls and a time-blind LTC) × seeds "
             f"{', '.join(map(str, p.seeds))} × {p.roads} held-out roads × {p.eval_steps / 10:.0f} s × "
             f"{len(p.conditions)} conditions, `{p.intervention}` interventions, paired statistics.",
             "",
             f"- Cells finished: {s['cells_done']} of {s['cells_planned']}"
             + (" (the sweep has not run yet: the v1 tables below are the only published numbers)."
                if s["cells_done"] == 0 else "."), ""]
    block += [f"- {x}" for x in findings(p, s)]
    block += ["", "**Corrections to the v1 page below** (measured by the same command):", ""]
    par = {r["policy"]: r for r in s["parameters"]}
    if "ncp-cfc" in par and "ncp-ltc" in par:
        c, lt = par["ncp-cfc"], par["ncp-ltc"]
        full = par.get("ncp-full")
        block.append(f"- The CfC cores' {c['core_storage']:,} parameters are *storage*: the wired "
                     f"CfC keeps dense matrices and masks absent synapses. Effective counts: NCP-CfC "
                     f"{c['core_effective']:,}, NCP-LTC {lt['core_effective']:,} (both cells have 4 "
                     "parameters per synapse)"
                     + (f"; ncp-full {full['core_effective']:,}, so v1's wiring ablation also "
                        "changed the parameter count." if full else "."))
    if s["noise"]:
        r = s["noise"]
        block.append("- Noise σ² 0.1 / 0.2 / 0.3 is nominal: after clipping to [0, 1] the realised "
                     "error variance is " + " / ".join(f"{x['realised_variance']:.3f}" for x in r)
                     + " (" + " / ".join(f"{100 * x['saturated_share']:.0f}" for x in r)
                     + " % of pixels saturated), measured on rendered test-road frames.")
    block.append("- v1's \"an NCP is best in 8 of 12\" counts conditions where every policy tied; "
                 "v2 counts wins, ties and losses per (seed, road) cell with ties named.")
    block.append("- v1's `ncp-random` / `ncp-full` are one layer of 19 neurons: their CfC reads only "
                 "previous-frame states, a different update schedule from the NCP's; v2's "
                 "`cfc-random` / `cfc-full` / `ltc-random` / `ltc-full` keep the NCP's schedule.")
    block += ["", V2_END]
    text = results_md.read_text() if results_md.is_file() else "# Results\n"
    if V2_BEGIN in text and V2_END in text:
        head, rest = text.split(V2_BEGIN, 1)
        tail = rest.split(V2_END, 1)[1]
        text = head + "\n".join(block) + tail
    else:
        lines = text.split("\n", 2)
        text = "\n".join(lines[:2] + ["\n".join(block), ""] + lines[2:])
    atomic_write_text(results_md, text)


def report(p: Protocol, lay: Layout, page: Path, command: str, results_md: Path | None = None,
           noise: bool = True) -> dict[str, Any]:
    from policies.atomicio import atomic_write_json

    s = summarise(p, lay, noise=noise)
    s["out"] = str(lay.out)
    atomic_write_json(page.parent / "summary.json", s)
    write_page(p, s, page, command)
    if results_md is not None:
        update_results_section(results_md, page, p, s, command)
    return s


__all__ = ["METRICS", "findings", "load_cells", "load_passive", "measure_noise", "passive_summary",
           "report", "summarise", "write_page"]

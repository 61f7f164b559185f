#!/usr/bin/env python
"""What one task of the protocol-v2 sweep costs: wall and CPU seconds, one torch thread.

Runs the sweep's own task bodies (`driving.sweep.tasks`), outside Ray, with the v2 knobs
except a smaller dataset and fewer epochs (both stated in the output): record the drives,
train NCP-LTC and the CNN, derive the matched-EMA CNN, evaluate 450-step cells. CPU seconds
(``time.process_time``) are what the sweep's cost estimate multiplies; wall seconds depend
on what else the machine is doing.

    python scripts/bench_sweep_tasks.py --json results/v2/task_costs.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the measurements here")
    ap.add_argument("--episodes", type=int, default=4, help="recorded drives (v2: 64)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs (v2: 6)")
    ap.add_argument("--conditions", default="none,noise:3,jitter:4")
    a = ap.parse_args(argv)

    from driving.sweep import tasks as T
    from driving.sweep.protocol import protocol
    from policies.atomicio import atomic_write_json

    p = protocol("v2", episodes=a.episodes, epochs=a.epochs)
    out: dict = {"protocol": p.fingerprint(), "note": f"v2 knobs with {a.episodes} drives and "
                 f"{a.epochs} epoch(s); one torch thread; started "
                 + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        data = str(Path(tmp) / "data")
        t, c = time.perf_counter(), time.process_time()
        T.ensure_dataset(p, data)
        out["record"] = {"wall_s": round(time.perf_counter() - t, 2),
                         "cpu_s": round(time.process_time() - c, 2), "frames": a.episodes * p.steps}
        runs = {}
        for pol in ("ncp-ltc", "cnn"):
            r = T.train_task(p, pol, 0, data)
            runs[pol] = r
            out[f"train {pol}"] = {"wall_s": r["seconds"], "cpu_s": r["cpu_seconds"],
                                   "best_val_mse": r["best_val_mse"]}
            print(out, file=sys.stderr, flush=True)
        d = T.derive_task(p, "cnn-ema", 0, data, runs["cnn"], runs["ncp-ltc"])
        out["derive cnn-ema"] = {"wall_s": d["seconds"], "cpu_s": d["cpu_seconds"],
                                 "calibration": d["calibration"]}
        for pol in ("ncp-ltc", "cnn"):
            for cond in a.conditions.split(","):
                e = T.eval_task(p, pol, 0, cond, 0, runs[pol])
                out[f"eval {pol} {cond}"] = {"wall_s": e["seconds"], "cpu_s": e["cpu_seconds"],
                                             "steps": p.eval_steps}
                print(out, file=sys.stderr, flush=True)
    if a.json:
        atomic_write_json(a.json, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

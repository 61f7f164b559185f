"""Multi-process training: `torchrun --nproc-per-node 2 -m driving train` (DDP over gloo).

Two processes with batch B each see, step for step, exactly the windows one process with
batch 2B sees (DistributedSampler shards one permutation), and DDP averages their gradients,
so without augmentation the weights must match a single-process run up to float rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train import make_dataset

from driving.cli import main


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_double_batch(tmp_path):
    data = make_dataset(tmp_path / "ds", episodes=7)  # 6 train episodes × 5 windows: even
    common = ["--data", str(data), "--policy", "ncp-cfc", "--epochs", "2", "--seq-len", "8",
              "--no-augment", "--threads", "1", "--patience", "0", "--seed", "1"]
    ddp_out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "driving", "train", *common, "--batch", "2", "--out", str(ddp_out)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single_out = tmp_path / "single"
    assert main(["train", *common, "--batch", "4", "--out", str(single_out)]) == 0

    a = load_file(str(ddp_out / "last" / "state.safetensors"))
    b = load_file(str(single_out / "last" / "state.safetensors"))
    model_keys = [k for k in a if k.startswith("model/")]
    assert model_keys and set(model_keys) == {k for k in b if k.startswith("model/")}
    from policies.factory import build_policy

    init = build_policy("ncp-cfc", (16, 24), seed=1).state_dict()  # training moved the weights
    assert any(not torch.equal(a[k], init[k[len("model/"):]]) for k in model_keys)
    for k in model_keys:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=f"{k} differs")
    rows = (ddp_out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # rank 0 wrote the metrics once per epoch
    frames = rows[1].split(",")[rows[0].split(",").index("frames")]
    assert int(frames) == 30 * 8  # both processes' frames counted: the whole train split

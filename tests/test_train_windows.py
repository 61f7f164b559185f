"""Training windows that match closed-loop use (issue 13): burn-in, stateful BPTT, augment names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_loader import LENGTHS
from test_loader import _make as make_tagged_store
from test_train import HW, make_dataset, small_args

from driving.augment import AUGMENTATIONS, DEFAULT_AUGMENT, augment_windows, parse_augment
from driving.cli import main
from driving.loader import WindowDataset, stateful_plan
from driving.train import _forward, carry, loss_mask, store, weighted_mse


@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> Path:
    return make_tagged_store(tmp_path_factory.mktemp("tagged") / "ds")


# ---------------------------------------------------------------------------- burn-in
def test_loss_mask_skips_the_burn_in_except_at_an_episode_start():
    mask = loss_mask(torch.tensor([0, 5, 12]), seq_len=6, burn_in=2)
    assert mask.tolist() == [[True] * 6, [False, False] + [True] * 4, [False, False] + [True] * 4]
    assert loss_mask(torch.tensor([3]), 6, 0) is None


def test_masked_loss_is_the_loss_of_the_kept_frames_only():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 6, generator=g, requires_grad=True)
    target = torch.rand(3, 6, generator=g) - 0.5
    mask = loss_mask(torch.tensor([4, 9, 2]), 6, 2)
    loss, mse = weighted_mse(pred, target, 3.0, mask)
    ref, ref_mse = weighted_mse(pred[:, 2:], target[:, 2:], 3.0)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(mse, ref_mse)
    loss.backward()
    assert torch.all(pred.grad[:, :2] == 0) and torch.all(pred.grad[:, 2:] != 0)  # no gradient from the burn-in


# ---------------------------------------------------------------------------- stateful
def test_tiled_windows_are_consecutive_and_drop_only_the_tail(tagged):
    ds = WindowDataset(tagged, seq_len=8, split="all", tile=True)
    for e, n in enumerate(LENGTHS):
        starts = [ds.window(i)[1] for i in range(len(ds)) if ds.window(i)[0] == e]
        assert starts == list(range(0, n - 7, 8))[: n // 8]


def test_stateful_plan_walks_every_episode_in_order_once(tagged):
    ds = WindowDataset(tagged, seq_len=8, split="all", tile=True)
    plan = stateful_plan(ds, streams=3, gen=torch.Generator().manual_seed(1))
    seen = [w for step in plan for _, w, _ in step]
    assert sorted(seen) == list(range(len(ds)))  # every window exactly once
    assert all(len({s for s, _, _ in step}) == len(step) <= 3 for step in plan)
    last: dict[int, tuple[int, int]] = {}
    for step in plan:
        for s, w, reset in step:
            ep, start = ds.window(w)
            assert reset == (start == 0)
            if not reset:  # the stream's previous window is the one just before, same episode
                assert last[s] == (ep, start - 8)
            last[s] = (ep, start)
    # starting anywhere: each stream's first episode may begin mid-way, still in order after
    anywhere = stateful_plan(ds, streams=3, gen=torch.Generator().manual_seed(5), start_anywhere=True)
    firsts = [ds.window(w)[1] for s in range(3) for step in anywhere[:1] for st, w, _ in step if st == s]
    assert any(f > 0 for f in firsts) and all(reset for _, _, reset in anywhere[0])
    assert {w for step in anywhere for _, w, _ in step} < set(range(len(ds)))
    other = stateful_plan(ds, streams=3, gen=torch.Generator().manual_seed(2))
    assert [r for st in plan for r in st] != [r for st in other for r in st]  # the order is drawn
    with pytest.raises(ValueError, match="tiled"):
        stateful_plan(WindowDataset(tagged, seq_len=8, split="all", stride=4), 2, torch.Generator())


@pytest.mark.parametrize("name", ["gru", "lstm", "ncp-cfc", "ncp-ltc"])
def test_carried_state_equals_running_the_whole_sequence_at_once(name):
    """Stateful windows through carry/store give the outputs of one pass over the episode."""
    from policies.factory import build_policy

    torch.manual_seed(0)
    policy = build_policy(name, HW, seed=0).eval()
    t, n_windows, b = 5, 3, 2
    images = torch.randint(0, 256, (b, t * n_windows, *HW, 3), dtype=torch.uint8)
    dt = 0.08 + 0.04 * torch.rand(b, t * n_windows)
    with torch.no_grad():
        whole, _ = policy(images, None, dt)
        carried = policy.initial_state(4)  # 4 streams, rows 1 and 3 drive these two episodes
        rows, pieces = [1, 3], []
        for k in range(n_windows):
            sl = slice(k * t, (k + 1) * t)
            h0 = carry(carried, rows, [k == 0, k == 0], policy.initial_state(len(rows)))
            pred, h = _forward(policy, policy, {"image": images[:, sl], "dt": dt[:, sl]}, h0)
            carried = store(carried, rows, h)
            pieces.append(pred)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-6)
    # and a reset row really starts from zero: its first window is the zero-state output
    with torch.no_grad():
        h0 = carry(carried, rows, [True, False], policy.initial_state(2))
        fresh, _ = policy(images[:1, :t], None, dt[:1, :t])
        again, _ = _forward(policy, policy, {"image": images[:, :t], "dt": dt[:, :t]}, h0)
    torch.testing.assert_close(again[0], fresh[0], rtol=1e-5, atol=1e-6)


def test_carry_keeps_gradients_inside_a_window_only():
    state = torch.zeros(3, 4)
    h = torch.ones(2, 4, requires_grad=True) * 2.0
    state = store(state, [0, 2], h)
    assert not state.requires_grad  # truncated: no gradient into the previous window
    assert state[:, 0].tolist() == [2.0, 0.0, 2.0]


# ---------------------------------------------------------------------------- augmentations
def test_augment_names_parse_and_draw_independently():
    assert parse_augment("default") == DEFAULT_AUGMENT == ("photometric", "shadow")
    assert parse_augment("noise,photometric") == ("photometric", "noise")  # draw order
    assert parse_augment("none") == () and parse_augment(False) == () and parse_augment(True) == DEFAULT_AUGMENT
    with pytest.raises(ValueError, match="'blur'"):
        parse_augment("blur")
    imgs = torch.randint(0, 256, (2, 3, 10, 12, 3), dtype=torch.uint8)
    assert torch.equal(augment_windows(imgs, torch.Generator().manual_seed(0), names=()), imgs)
    outs = {n: augment_windows(imgs, torch.Generator().manual_seed(0), names=(n,)) for n in AUGMENTATIONS}
    for n, out in outs.items():
        assert not torch.equal(out, imgs), n
    assert not torch.equal(outs["photometric"], outs["shadow"])
    # noise is fresh per frame; photometric is one draw per window (same gain on every frame)
    noise = outs["noise"].float() - imgs.float()
    assert not torch.allclose(noise[:, 0], noise[:, 1])
    flat = torch.full((1, 3, 4, 4, 3), 128, dtype=torch.uint8)
    photo = augment_windows(flat, torch.Generator().manual_seed(3), names=("photometric",))
    assert torch.equal(photo[:, 0], photo[:, 1]) and torch.equal(photo[:, 1], photo[:, 2])


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("win") / "ds", episodes=5, length=24)


@pytest.mark.parametrize("scheme", [("--seq-len", "8", "--burn-in", "3"), ("--seq-len", "6", "--stateful"),
                                    ("--seq-len", "6", "--stateful", "--burn-in", "2", "--max-frames", "48")])
def test_schemes_train_resume_and_record_their_settings(data, tmp_path, scheme):
    from safetensors.torch import load_file

    from policies.checkpoint import read_config

    common = ["--policy", "ncp-cfc", "--patience", "0", "--cnn-warmup-steps", "3",
              "--augment", "photometric,noise", *scheme]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main([*small_args(data, ref), *common, "--epochs", "2"]) == 0
    training = read_config(ref)["training"]
    assert training["augment"] == "photometric,noise"
    assert training["stateful"] == ("--stateful" in scheme)
    assert training["burn_in"] == (int(scheme[scheme.index("--burn-in") + 1]) if "--burn-in" in scheme else 0)
    rows = (ref / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and all(np.isfinite(float(r.split(",")[2])) for r in rows[1:])
    # one epoch, then resumed: the same weights as the run straight through
    assert main([*small_args(data, cut), *common, "--epochs", "1"]) == 0
    assert main(["train", "--out", str(cut), "--resume", "--epochs", "2"]) == 0
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_training_runs_where_supported(data, tmp_path):
    from driving.train_run import supports_bf16

    if not supports_bf16(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16 (the exit-2 path is tested in test_train_robust)")
    from safetensors.torch import load_file

    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main([*small_args(data, out), "--policy", "gru", "--epochs", "1", "--cnn-warmup-steps", "2",
                     "--precision", precision]) == 0
        runs[precision] = load_file(str(out / "model.safetensors"))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in runs["bf16"].values())
    assert any(not torch.equal(runs["fp32"][k], runs["bf16"][k]) for k in runs["fp32"])  # bf16 did run

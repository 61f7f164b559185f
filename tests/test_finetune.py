"""`driving train --init-from`: fine-tuning starts from a checkpoint's weights and wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train import done_run, make_dataset, small_args, tensors_of  # noqa: F401 (fixtures)

from driving.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


def test_zero_learning_rate_fine_tune_keeps_the_weights_and_the_wiring(data, done_run, tmp_path):  # noqa: F811
    import json

    out = tmp_path / "ft"
    # a CNN factor of 0 and a near-zero lr: the weights must come out as they went in
    assert main(small_args(data, out, "--init-from", str(done_run), "--epochs", "1", "--lr", "1e-12",
                           "--cnn-lr-factor", "0")) == 0
    a, b = tensors_of(done_run / "model.safetensors"), tensors_of(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-8, rtol=0)
    ca, cb = (json.loads((p / "config.json").read_text()) for p in (done_run, out))
    assert cb["policy"] == ca["policy"] == "ncp-cfc"
    assert cb["policy_spec"] == ca["policy_spec"]  # the init's wiring, not one drawn from --seed
    assert cb["training"]["init_from"] == str(done_run.resolve())


def test_a_fresh_run_differs_from_a_fine_tuned_one(data, done_run, tmp_path):  # noqa: F811
    fresh, ft = tmp_path / "fresh", tmp_path / "ft"
    assert main(small_args(data, fresh, "--epochs", "1", "--seed", "3")) == 0
    assert main(small_args(data, ft, "--epochs", "1", "--seed", "3", "--init-from", str(done_run))) == 0
    a, b, init = (tensors_of(p / "model.safetensors") for p in (fresh, ft, done_run))
    # one epoch of fine-tuning stays much nearer its start than a fresh run does
    dist = lambda x, y: sum(float((x[k] - y[k]).norm()) for k in x)  # noqa: E731
    assert dist(b, init) < 0.5 * dist(a, init)


def test_init_from_a_different_policy_or_image_size_exits_2(data, done_run, tmp_path, capsys):  # noqa: F811
    assert main(small_args(data, tmp_path / "a", "--init-from", str(done_run), "--policy", "lstm")) == 2
    err = capsys.readouterr().err
    assert "'ncp-cfc' policy but --policy is 'lstm'" in err and "--policy ncp-cfc" in err
    other = make_dataset(tmp_path / "big", episodes=2)
    assert main(small_args(other, tmp_path / "b", "--init-from", "pretrained:ncp-cfc")) == 2
    err = capsys.readouterr().err
    assert "(78, 200) images but the dataset's are (16, 24)" in err
    assert main(small_args(data, tmp_path / "c", "--init-from", str(tmp_path / "nowhere"))) == 2
    assert "--init-from" in capsys.readouterr().err
    assert not any((tmp_path / n / "model.safetensors").exists() for n in "abc")


def test_init_cnn_from_copies_the_perception_and_trains_a_fresh_core(data, done_run, tmp_path):  # noqa: F811
    out = tmp_path / "ltc"
    assert main(small_args(data, out, "--policy", "ncp-ltc", "--init-cnn-from", str(done_run),
                           "--epochs", "1", "--cnn-lr-factor", "0")) == 0
    donor, got = tensors_of(done_run / "model.safetensors"), tensors_of(out / "model.safetensors")
    cnn = [k for k in donor if k.startswith("cnn.")]
    assert cnn and all(torch.equal(donor[k], got[k]) for k in cnn)  # CNN frozen at the donor's
    fresh = tmp_path / "fresh"
    assert main(small_args(data, fresh, "--policy", "ncp-ltc", "--epochs", "1", "--cnn-lr-factor", "0")) == 0
    other = tensors_of(fresh / "model.safetensors")
    assert any(not torch.equal(other[k], got[k]) for k in cnn)  # without it the CNN is another


def test_init_cnn_from_refuses_a_mismatch(data, done_run, tmp_path, capsys):  # noqa: F811
    assert main(small_args(data, tmp_path / "a", "--init-cnn-from", "pretrained:ncp-cfc")) == 2
    assert "(78, 200) images but the dataset's are (16, 24)" in capsys.readouterr().err
    assert main(small_args(data, tmp_path / "b", "--init-cnn-from", str(done_run),
                           "--init-from", str(done_run))) == 2
    assert "not both" in capsys.readouterr().err

"""Checkpoints: safetensors + JSON, atomic, rebuilt from the directory alone, no pickle."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import save_file

from policies.checkpoint import (
    load_policy,
    read_config,
    save_checkpoint,
)
from policies.factory import build_policy

HW = (24, 40)


def frames(b=2, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, *HW, 3), dtype=torch.uint8, generator=g)


def train_step(p, opt, seed=0):
    opt.zero_grad()
    steer, _ = p(frames(seed=seed), timespans=torch.full((2, 3), 0.1))
    (steer - 0.3).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("name", ["ncp-cfc", "ncp-ltc", "ncp-random", "lstm", "ctrnn", "cnn"])
def test_roundtrip_rebuilds_the_same_function(tmp_path, name):
    p = build_policy(name, image_hw=HW, seed=4)
    opt = torch.optim.SGD(p.parameters(), lr=0.1)
    train_step(p, opt)  # weights differ from a fresh build
    run = tmp_path / "run"
    save_checkpoint(run, p, {"lr": 0.1, "dataset": "abc123"})
    assert sorted(os.listdir(run)) == ["config.json", "model.safetensors"]
    q, cfg = load_policy(run)
    assert cfg["policy"] == name and cfg["image_hw"] == list(HW)
    assert cfg["lr"] == 0.1 and cfg["dataset"] == "abc123"
    assert cfg["parameters"] == p.parameter_count()
    assert cfg["package_version"]
    assert not q.training
    with torch.no_grad():
        a, _ = p(frames(seed=9), timespans=torch.full((2, 3), 0.2))
        b, _ = q(frames(seed=9), timespans=torch.full((2, 3), 0.2))
    assert torch.equal(a, b)
    if name.startswith("ncp"):
        assert q.core.wiring == p.core.wiring
        assert cfg["core"]["units"] == 19


def test_random_wiring_is_restored_not_redrawn(tmp_path):
    from policies.wiring import Wiring

    w = Wiring.random(seed=77)
    p = build_policy("ncp-random", image_hw=HW, seed=1, wiring=w)
    save_checkpoint(tmp_path, p, {})
    q, _ = load_policy(tmp_path)
    assert q.core.wiring == w


def test_a_checkpoint_holds_the_policy_only_and_drops_old_training_state_files(tmp_path):
    """Training state has one format (policies.training_state); files an earlier version kept
    in the checkpoint are removed on save, since the config no longer vouches for them."""
    p = build_policy("gru", image_hw=HW)
    for name in ("optimizer.safetensors", "optimizer.json", "extra.safetensors"):
        (tmp_path / name).write_bytes(b"old")
    save_checkpoint(tmp_path, p, {})
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    import policies.checkpoint as ck

    assert not hasattr(ck, "load_optimizer_state") and not hasattr(ck, "flatten_state")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    p = build_policy("lstm", image_hw=HW, seed=1)
    save_checkpoint(tmp_path, p, {"epoch": 1})
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    q = build_policy("lstm", image_hw=HW, seed=2)
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path, q, {"epoch": object()})
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before
    with pytest.raises(ValueError, match="disagrees"):
        save_checkpoint(tmp_path, q, {"policy": "gru"})
    load_policy(tmp_path)


def test_torn_checkpoint_is_detected(tmp_path):
    a, b = build_policy("gru", image_hw=HW, seed=1), build_policy("gru", image_hw=HW, seed=2)
    save_checkpoint(tmp_path / "a", a, {})
    save_checkpoint(tmp_path / "b", b, {})
    # the model of one save with the config of another: what an interrupted save could leave
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="torn"):
        load_policy(tmp_path / "a")


def test_killed_saves_never_leave_a_half_written_checkpoint(tmp_path):
    """SIGKILL a process that saves in a loop; whatever it leaves must load (or be flagged)."""
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, torch
        from policies.checkpoint import save_checkpoint
        from policies.factory import build_policy
        p = build_policy("lstm", image_hw={HW!r})
        save_checkpoint({str(run)!r}, p, {{"i": 0}})
        print("ready", flush=True)
        i = 0
        while True:
            i += 1
            with torch.no_grad():
                for q in p.parameters():
                    q.add_(0.01)
            save_checkpoint({str(run)!r}, p, {{"i": i}})
    """)
    progressed = []
    for delay in (0.0, 0.137):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            deadline = time.monotonic() + 60
            while json.loads((run / "config.json").read_text())["i"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # config.json is replaced atomically: always complete
            time.sleep(delay)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            q, cfg = load_policy(run)
        except ValueError as exc:  # only the microseconds between two renames
            assert "torn" in str(exc)
            continue
        shift = float((q.readout.bias - build_policy("lstm", image_hw=HW).readout.bias).detach())
        assert abs(shift - 0.01 * cfg["i"]) < 1e-4  # weights and config from the same save
        assert sorted(f for f in os.listdir(run) if not f.startswith(".")) == [
            "config.json", "model.safetensors"]
        progressed.append(cfg["i"])
    assert len(progressed) >= 1 and all(i >= 2 for i in progressed)  # killed mid-run of saves


def test_missing_and_non_checkpoint_directories(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_policy(tmp_path / "nope")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_policy(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        load_policy(tmp_path / "notes.txt")


def test_unreadable_config_and_unknown_policy(tmp_path):
    p = build_policy("gru", image_hw=HW)
    save_checkpoint(tmp_path, p, {})
    cfg_path = tmp_path / "config.json"
    good = cfg_path.read_text()
    cfg_path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        load_policy(tmp_path)
    cfg = json.loads(good)
    cfg["policy"] = "transformer"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown policy 'transformer'.*ncp-cfc"):
        load_policy(tmp_path)
    cfg_path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a liquid-drive checkpoint"):
        load_policy(tmp_path)


def _rewrite(run, tensors=None, **changes):
    """Edit a checkpoint by hand (as a user or another version might), keeping its hashes valid."""
    import hashlib

    if tensors is not None:
        save_file(tensors, str(run / "model.safetensors"))
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(changes)
    cfg["files"]["model.safetensors"] = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    (run / "config.json").write_text(json.dumps(cfg))


def test_tensors_not_matching_config_or_architecture(tmp_path):
    p = build_policy("gru", image_hw=HW)
    save_checkpoint(tmp_path, p, {})
    sd = {k: v.clone() for k, v in p.state_dict().items()}
    sd["readout.weight"] = torch.zeros(1, 65)
    del sd["readout.bias"]
    _rewrite(tmp_path, sd)
    with pytest.raises(ValueError, match=r"do not match config.json.*readout\.bias.*readout\.weight"):
        load_policy(tmp_path)
    # the file agrees with the recorded tensor list, but the spec builds another architecture
    save_checkpoint(tmp_path, p, {})
    cfg = read_config(tmp_path)
    spec = dict(cfg["policy_spec"], kwargs=dict(cfg["policy_spec"]["kwargs"], units=32))
    _rewrite(tmp_path, policy_spec=spec)
    with pytest.raises(ValueError, match="architecture"):
        load_policy(tmp_path)


def test_pickled_checkpoints_are_refused(tmp_path):
    p = build_policy("gru", image_hw=HW)
    torch.save(p.state_dict(), tmp_path / "model.pt")
    for target in (tmp_path / "model.pt", tmp_path):
        with pytest.raises(ValueError, match="pickled checkpoints are not loaded for safety; convert"):
            load_policy(target)
    # a pickle under the safetensors name is refused too, without unpickling it
    run = tmp_path / "run"
    save_checkpoint(run, p, {})
    torch.save(p.state_dict(), run / "model.safetensors")
    _rewrite(run)
    with pytest.raises(ValueError, match="pickled"):
        load_policy(run)


def test_a_file_inside_the_run_dir_is_accepted(tmp_path):
    p = build_policy("cnn", image_hw=HW)
    save_checkpoint(tmp_path, p, {})
    q, _ = load_policy(tmp_path / "config.json")
    assert q.name == "cnn"


def test_wrapped_policies_are_unwrapped_and_others_refused(tmp_path):
    p = build_policy("gru", image_hw=HW)

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel(policy)
        def __init__(self, module):
            super().__init__()
            self.module = module

    save_checkpoint(tmp_path, Wrapper(p), {})
    q, cfg = load_policy(tmp_path)
    assert cfg["policy"] == "gru" and "module.cnn.head_weight" not in cfg["tensors"]
    with pytest.raises(ValueError, match="needs a policies.Policy"):
        save_checkpoint(tmp_path, torch.nn.Linear(2, 2), {})


def test_policies_never_import_driving():
    """`policies` is the lowest layer (docs/architecture.md): saving a checkpoint (which records
    the package version) must work with `driving` unimportable."""
    code = textwrap.dedent("""
        import sys, tempfile
        sys.modules["driving"] = None  # any `import driving` now raises ImportError
        from policies.checkpoint import package_version, save_checkpoint, load_policy
        from policies.factory import build_policy
        d = tempfile.mkdtemp()
        save_checkpoint(d, build_policy("ncp-ltc", image_hw=(24, 40)), {})
        load_policy(d)
        assert package_version() not in ("", "unknown"), package_version()
        assert not any(m == "driving" or m.startswith("driving.") for m in sys.modules
                       if sys.modules[m] is not None)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]


def test_no_module_of_policies_imports_driving():
    import ast
    from pathlib import Path

    import policies

    root = Path(policies.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{node.lineno}" for n in names
                          if n == "driving" or n.startswith("driving.")]
    assert not offenders, offenders


def _expected_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def test_checkpoint_and_onnx_files_have_the_usual_mode_not_0600(tmp_path):
    """Issue 12 item 10: mkstemp made checkpoints 0600 while every other output is 0644."""
    p = build_policy("ncp-cfc", image_hw=HW)
    save_checkpoint(tmp_path / "run", p, {"x": 1})
    files = sorted((tmp_path / "run").iterdir())
    assert {f.name for f in files} == {"model.safetensors", "config.json"}
    for f in files:
        assert (f.stat().st_mode & 0o777) == _expected_mode(), f.name
    pytest.importorskip("onnx")
    from policies.export import export_onnx

    out = export_onnx(p, tmp_path / "step.onnx")
    assert (out.stat().st_mode & 0o777) == _expected_mode()
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


@pytest.mark.parametrize("protocol", [0, 1, 2, 4])
def test_every_pickle_protocol_is_named_pickled(tmp_path, protocol):
    """Issue 12 item 9: protocol 0/1 pickles have no magic number; they were reported as a torn
    checkpoint or 'header too large' instead of 'pickled'. Nothing is ever unpickled."""
    import pickle

    blob = pickle.dumps({"w": [0.5] * 64, "b": "x"}, protocol=protocol)
    run = tmp_path / "run"
    save_checkpoint(run, build_policy("ncp-ltc", image_hw=HW), {})
    (run / "model.safetensors").write_bytes(blob)  # a pickle under the checkpoint's name
    with pytest.raises(ValueError, match="pickled") as exc:
        load_policy(run)
    assert "header too large" not in str(exc.value) and "SHA-256" not in str(exc.value)
    loose = tmp_path / "weights.safetensors"  # a loose file given as the checkpoint
    loose.write_bytes(blob)
    with pytest.raises(ValueError, match="pickled"):
        load_policy(loose)


def test_safetensors_starting_with_the_pickle_magic_byte_still_loads(tmp_path):
    """A safetensors header length of 128 + 256·k makes the file start with 0x80, a pickle's
    magic byte: such a checkpoint is valid and must load, not be refused as pickled."""
    from safetensors.torch import save

    from policies.checkpoint import _load_tensors

    for pad in range(300):
        data = save({"a": torch.arange(4.0)}, metadata={"pad": "x" * pad})
        if data[0] == 0x80:
            break
    else:  # pragma: no cover
        pytest.fail("no padding gives a leading 0x80")
    f = tmp_path / "t.safetensors"
    f.write_bytes(data)
    assert torch.equal(_load_tensors(f)["a"], torch.arange(4.0))

"""policies.atomicio: the one writer every output goes through, and the pickle guard."""

from __future__ import annotations

import json
import os
import pickle
import stat

import numpy as np
import pytest

from policies.atomicio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_png,
    atomic_write_with,
    jsonable,
    looks_pickled,
    remove_stale_temps,
)


def test_writes_replace_whole_files_with_the_usual_mode(tmp_path):
    p = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(p, b"old")
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o666 & ~_umask()
    assert sorted(os.listdir(p.parent)) == ["a.bin"]


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_an_error_mid_write_leaves_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"v": 1})

    def boom(f):
        f.write(b"{half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write_with(p, boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(p, lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert json.loads(p.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_json_is_strict_and_numpy_safe(tmp_path):
    p = atomic_write_json(tmp_path / "r.json", {"nan": float("nan"), "inf": np.float32("inf"),
                                                "a": np.arange(3), "t": (1, 2.5), "b": np.bool_(True)})
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"nan": None, "inf": None, "a": [0, 1, 2], "t": [1, 2.5], "b": True}
    assert jsonable({1: np.int64(3)}) == {"1": 3}


def test_png_round_trip(tmp_path):
    import cv2

    img = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    atomic_write_png(tmp_path / "x.png", img)
    back = cv2.imread(str(tmp_path / "x.png"))[..., ::-1]
    np.testing.assert_array_equal(back, img)
    with pytest.raises(ValueError, match="uint8"):
        atomic_write_png(tmp_path / "y.png", img.astype(np.float32))


def test_pickles_are_recognised_and_safetensors_are_not(tmp_path):
    import torch
    from safetensors.torch import save_file

    for proto in (2, 3, 4, 5):
        (tmp_path / f"p{proto}").write_bytes(pickle.dumps({"x": list(range(40))}, protocol=proto))
        assert looks_pickled(tmp_path / f"p{proto}")
    assert looks_pickled(tmp_path / "model.pt")  # by name, even if missing
    # a safetensors file whose header length is 128 + 256k starts with 0x80 like a pickle
    for pad in range(300):
        save_file({"w" + "x" * pad: torch.zeros(2)}, str(tmp_path / "m.safetensors"))
        if (tmp_path / "m.safetensors").read_bytes()[:1] == b"\x80":
            break
    assert (tmp_path / "m.safetensors").read_bytes()[:1] == b"\x80"
    assert not looks_pickled(tmp_path / "m.safetensors")
    (tmp_path / ".a.json.123.tmp").write_text("x")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".a.json.123.tmp"]

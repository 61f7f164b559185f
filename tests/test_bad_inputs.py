"""The bad-input corpus (issue 12): every verb, refused with exit 2 and one line, nothing touched.

Each case runs the CLI in-process (`driving.cli.main`) and checks

- the exit code is 2;
- the last stderr line is the one-line message (``driving VERB: error: ...``) and holds the
  case's key words (and none of its misleading words);
- no traceback is printed (an exception escaping `main` fails the case too);
- every file and folder already there (the shared dataset, checkpoint and report, and the
  case's own workspace with an earlier report, stills, videos, ONNX files) is unchanged:
  same names, same bytes (sha256), nothing created.

Cases that `eval` and `export` must refuse before any work run with the work function
replaced by one that fails loudly, so "refused after driving every episode" cannot pass.
A second part covers a full disk (ENOSPC/EDQUOT, injected into the atomic writer) in
`eval`, `export`, `compare`, `preview` and `explain`, and the `driving.outputs` helpers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.fake_drive_env  # noqa: F401  (registers the fake env id)
from driving import outputs
from driving.cli import main
from tests.fake_drive_env import FAKE_ID

HW = (16, 24)
PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------- fixtures


def _tiny_dataset(root: Path, episodes: int = 4, length: int = 20) -> Path:
    from driving.dataset import DatasetWriter

    rng = np.random.default_rng(0)
    h, w = HW
    writer = DatasetWriter(root, "liquid_drive/Racetrack-v0", {}, {"height": h, "width": w}, durable=False)
    for e in range(episodes):
        steer = (0.5 * np.sin(np.arange(length) / 3.0 + e)).astype(np.float32)
        dt = np.full(length, 0.1, np.float32)
        frames = rng.integers(0, 255, (length, h, w, 3), dtype=np.uint8)
        writer.append_episode(frames, {"steering": steer, "action": steer,
                                       "speed": np.full(length, 8.0, np.float32),
                                       "time_s": np.cumsum(dt).astype(np.float64), "dt_s": dt},
                              {"source": "expert", "seed": e})
    writer.close()
    return root


def _report(policy: str = "p") -> dict:
    per = {"mean_abs_cross_track_m": [0.2, 0.3], "lane_departures_per_km": [0.0, 1.0],
           "crashes": [0, 1], "completion_pct": [100.0, 90.0], "autonomy_pct": [100.0, 95.0],
           "steering_jerk": [1.0, 2.0]}
    row = {"corruption": "none", "severity": 0, "episodes": 2, "distance_m": 100.0,
           "mean_abs_cross_track_m": 0.25, "lane_departures_per_km": 0.5, "crashes": 1,
           "completion_pct": 95.0, "autonomy_pct": 97.5, "per_episode": per}
    return {"policy": policy, "checkpoint": "x", "env": FAKE_ID, "results": [row],
            "settings": {"episode_seeds": [1, 2]}}


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    """Shared inputs: a dataset, a checkpoint (16x24 camera), an eval report, a pickle."""
    from policies.checkpoint import save_checkpoint
    from policies.factory import build_policy

    root = tmp_path_factory.mktemp("fx")
    ckpt = root / "ckpt"
    save_checkpoint(ckpt, build_policy("ncp-cfc", image_hw=HW), {})
    rep = root / "rep"
    rep.mkdir()
    (rep / "report.json").write_text(json.dumps(_report()))
    pickled = root / "pickled"  # a pickle under the safetensors name
    pickled.mkdir()
    shutil.copy(ckpt / "config.json", pickled / "config.json")
    torch.save({"w": torch.ones(3)}, pickled / "model.safetensors")
    torch.save({"w": torch.ones(1)}, root / "model.pt")
    return {"root": root, "ds": _tiny_dataset(root / "ds"), "ckpt": ckpt, "rep": rep,
            "pickled": pickled, "pt": root / "model.pt"}


def _workspace(ws: Path, fx: dict[str, Path]) -> None:
    """Earlier outputs a careless command could clobber."""
    (ws / "note.txt").write_text("my notes\n")
    (ws / "report").mkdir()
    (ws / "report" / "report.json").write_text(json.dumps(_report("old")))
    (ws / "report" / "report.md").write_text("# old report\n")
    (ws / "multi" / "Fake-v0").mkdir(parents=True)  # `eval --envs` output: a report per env
    (ws / "multi" / "Fake-v0" / "report.json").write_text(json.dumps(_report("old")))
    (ws / "cmp").mkdir()
    (ws / "cmp" / "compare.json").write_text("{}\n")
    (ws / "still.png").write_bytes(PNG + b"old still")
    (ws / "video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 old video")
    (ws / "ssim.json").write_text('{"ssim_mean": 0.5}\n')
    (ws / "step.onnx").write_bytes(b"old onnx")
    (ws / "fake.png").write_text("not an image\n")
    for d in ("adir.onnx", "adir.png", "adir.mp4"):
        (ws / d).mkdir()
    (ws / "bad.json").write_text("{not json")
    damaged = ws / "damaged"  # a store with one chunk file gone
    shutil.copytree(fx["ds"], damaged)
    next(iter(sorted((damaged / "episodes").glob("ep_*/frames/c.*")))).unlink()


def _snapshot(*roots: Path) -> dict[str, str]:
    snap = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            key = str(p)
            if p.is_symlink():
                snap[key] = "link:" + str(p.readlink())
            elif p.is_dir():
                snap[key] = "dir"
            else:
                snap[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


# ------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    words: tuple[str, ...]  # key words of the message (case-insensitive), paths formatted too
    absent: tuple[str, ...] = ()  # misleading words the message must not contain
    line: str = ""  # start of the message line; default "driving VERB: error:"
    no_work: str = ""  # "module:function" that must never be called


EVAL = ("eval", "--checkpoint", "{ckpt}", "--env", FAKE_ID, "--episodes", "1", "--steps", "3",
        "--corruptions", "none", "--env-config", '{"height": 16, "width": 24}')
NO_EVAL = "driving.evaluate:run_tasks"  # drives the episodes
COLLECT = ("collect", "--env", "liquid_drive/Racetrack-v0", "--episodes", "1", "--steps", "5",
           "--quiet")
TRAIN = ("train", "--data", "{ds}", "--policy", "ncp-cfc", "--seq-len", "8", "--batch", "2",
         "--threads", "1", "--epochs", "1", "--workers", "0")
EXPLAIN = ("explain", "--policy", "ncp-cfc", "--env", FAKE_ID, "--steps", "3")
EXPORT = ("export", "--checkpoint", "{ckpt}", "--no-check")
NO_EXPORT = "policies.export:export_onnx"

CASES: dict[str, Case] = {
    # collect
    "collect-out-under-file": Case((*COLLECT, "--out", "{ws}/note.txt/ds"), ("note.txt", "is a file")),
    "collect-out-is-file": Case((*COLLECT, "--out", "{ws}/note.txt"), ("note.txt", "is a file")),
    "collect-out-holds-report": Case((*COLLECT, "--out", "{ws}/report"), ("evaluation report", "report.json")),
    "collect-out-holds-run": Case((*COLLECT, "--out", "{ckpt}"), ("training run",)),
    "collect-dart-noise-nan": Case((*COLLECT, "--out", "{ws}/new", "--dart-noise", "nan"), ("--dart-noise", "nan", "finite")),
    "collect-dart-noise-inf": Case((*COLLECT, "--out", "{ws}/new", "--dart-noise", "inf"), ("--dart-noise", "inf")),
    "collect-dart-noise-negative": Case((*COLLECT, "--out", "{ws}/new", "--dart-noise", "-0.1"), ("--dart-noise", "-0.1")),
    "collect-env-kwargs-word-for-number": Case((*COLLECT, "--out", "{ws}/new", "--env-kwargs", '{"speed_mps": "fast"}'),
                                               ("speed_mps", "'fast'", "number"), ("could not convert",)),
    "collect-env-kwargs-lane-width-word": Case((*COLLECT, "--out", "{ws}/new", "--env-kwargs", '{"lane_width_m": "wide"}'),
                                               ("lane_width_m", "'wide'"), ("could not convert",)),
    "collect-env-kwargs-list-for-number": Case((*COLLECT, "--out", "{ws}/new", "--env-kwargs", '{"object_density": [1]}'),
                                               ("object_density", "[1]"), ("float() argument",)),
    "collect-env-kwargs-null-speed": Case((*COLLECT, "--out", "{ws}/new", "--env-kwargs", '{"speed_mps": null}'),
                                          ("speed_mps", "none"), ("not iterable",)),
    "collect-env-kwargs-not-object": Case((*COLLECT, "--out", "{ws}/new", "--env-kwargs", "[1, 2]"), ("--env-kwargs", "json object")),
    "collect-env-kwargs-bad-json": Case((*COLLECT, "--out", "{ws}/new", "--env-kwargs", "{lanes: 2"), ("--env-kwargs", "not valid json")),
    "collect-unknown-env-key": Case((*COLLECT, "--out", "{ws}/new", "--env-kwargs", '{"lanes": 2}'), ("unknown config key", "lanes")),
    # dataset
    "dataset-info-path-is-file": Case(("dataset", "info", "{ws}/note.txt"), ("note.txt", "file"), ("does not exist",)),
    "dataset-verify-path-is-file": Case(("dataset", "verify", "{ws}/note.txt"), ("note.txt", "file"), ("does not exist",)),
    "dataset-info-missing": Case(("dataset", "info", "{ws}/nothing"), ("nothing", "does not exist")),
    "dataset-info-not-a-dataset": Case(("dataset", "info", "{ws}/report"), ("report", "not a liquid-drive dataset")),
    "dataset-info-damaged-store": Case(("dataset", "info", "{ws}/damaged"), ("damaged", "verify"), line="WARNING"),
    # train
    "train-out-under-file": Case((*TRAIN, "--out", "{ws}/note.txt/run"), ("note.txt", "file")),
    "train-out-is-file": Case((*TRAIN, "--out", "{ws}/note.txt"), ("note.txt",)),
    "train-out-holds-report": Case((*TRAIN, "--out", "{ws}/report"), ("{ws}/report",)),
    "train-out-existing-run": Case((*TRAIN, "--out", "{ckpt}"), ("{ckpt}", "already exists")),
    "train-lr-inf": Case((*TRAIN, "--out", "{ws}/run", "--lr", "inf"), ("--lr", "inf")),
    "train-lr-nan": Case((*TRAIN, "--out", "{ws}/run", "--lr", "nan"), ("--lr", "nan")),
    "train-grad-clip-negative": Case((*TRAIN, "--out", "{ws}/run", "--grad-clip", "-1"), ("--grad-clip", "-1")),
    "train-weight-decay-negative": Case((*TRAIN, "--out", "{ws}/run", "--weight-decay", "-1"), ("--weight-decay", "-1")),
    "train-resume-new-dir": Case(("train", "--resume", "--out", "{ws}/newrun"), ("--resume", "newrun"), ("dataset .",)),
    "train-data-is-file": Case((*TRAIN[:1], "--data", "{ws}/note.txt", "--out", "{ws}/run"), ("note.txt", "file"), ("does not exist",)),
    "train-unknown-policy": Case((*TRAIN[:3], "--policy", "transformer", "--out", "{ws}/run"), ("unknown policy", "transformer")),
    # eval: all before any episode
    "eval-out-under-file": Case((*EVAL, "--out", "{ws}/note.txt/ev"), ("note.txt", "is a file"), no_work=NO_EVAL),
    "eval-out-is-file": Case((*EVAL, "--out", "{ws}/note.txt"), ("note.txt", "is a file"), no_work=NO_EVAL),
    "eval-out-earlier-report": Case((*EVAL, "--out", "{ws}/report"), ("already holds", "--force"), no_work=NO_EVAL),
    "eval-envs-earlier-report-of-one-env": Case(("eval", "--checkpoint", "{ckpt}", "--envs", f"{FAKE_ID},liquid_drive/Racetrack-v0",
                                                 "--out", "{ws}/multi"), ("Fake-v0", "already holds", "--force"), no_work=NO_EVAL),
    "eval-out-empty": Case((*EVAL, "--out", ""), ("--out is empty",), no_work=NO_EVAL),
    "eval-passive-earlier-report": Case(("eval", "--checkpoint", "{ckpt}", "--data", "{ds}", "--out", "{ws}/report"),
                                        ("already holds", "--force")),
    "eval-passive-data-is-file": Case(("eval", "--checkpoint", "{ckpt}", "--data", "{ws}/note.txt", "--out", "{ws}/ev"),
                                      ("--data", "note.txt")),
    "eval-out-holds-run": Case((*EVAL, "--out", "{ckpt}"), ("training run",), no_work=NO_EVAL),
    "eval-out-holds-dataset": Case((*EVAL, "--out", "{ds}"), ("dataset",), no_work=NO_EVAL),
    "eval-out-holds-comparison": Case((*EVAL, "--out", "{ws}/cmp"), ("comparison",), no_work=NO_EVAL),
    "eval-checkpoint-pickled-safetensors": Case((*EVAL[:2], "{pickled}", *EVAL[3:], "--out", "{ws}/ev"), ("pickle",),
                                                ("header too large",), no_work=NO_EVAL),
    "eval-checkpoint-pt-file": Case((*EVAL[:2], "{pt}", *EVAL[3:], "--out", "{ws}/ev"), ("pickle",), no_work=NO_EVAL),
    "eval-env-config-word-for-number": Case(("eval", "--checkpoint", "{ckpt}", "--env", "liquid_drive/Racetrack-v0",
                                             "--env-config", '{"speed_mps": "fast"}', "--out", "{ws}/ev"),
                                            ("speed_mps", "'fast'"), ("could not convert",), no_work=NO_EVAL),
    "eval-env-config-missing-file": Case((*EVAL[:-2], "--env-config", "@{ws}/nothing.json", "--out", "{ws}/ev"),
                                         ("--env-config", "nothing.json"), no_work=NO_EVAL),
    "eval-severity-out-of-range": Case((*EVAL, "--severities", "1,9", "--out", "{ws}/ev"), ("severit", "9"), no_work=NO_EVAL),
    "eval-unknown-corruption": Case((*EVAL[:-4], "--corruptions", "smog", *EVAL[-2:], "--out", "{ws}/ev"), ("smog",), no_work=NO_EVAL),
    # compare
    "compare-out-is-file": Case(("compare", "{rep}", "--out", "{ws}/note.txt"), ("note.txt", "is a file")),
    "compare-out-under-file": Case(("compare", "{rep}", "--out", "{ws}/note.txt/c"), ("note.txt", "is a file")),
    "compare-out-is-an-input-report": Case(("compare", "{rep}", "--out", "{rep}"), ("evaluation report",)),
    "compare-out-holds-run": Case(("compare", "{rep}", "--out", "{ckpt}"), ("training run",)),
    "compare-no-report": Case(("compare", "{ws}/nothing", "--out", "{ws}/c"), ("no report.json",)),
    "compare-report-not-json": Case(("compare", "{ws}/bad.json", "--out", "{ws}/c"), ("bad.json", "not valid json")),
    # explain
    "explain-still-exists": Case((*EXPLAIN, "--frame", "1", "--out", "{ws}/still.png"), ("still.png", "--force")),
    "explain-ssim-exists": Case((*EXPLAIN, "--ssim", "--corruption", "fog:3", "--out", "{ws}/ssim.json"), ("ssim.json", "--force")),
    "explain-video-exists": Case((*EXPLAIN, "--out", "{ws}/video.mp4"), ("video.mp4", "--force")),
    "explain-out-under-file": Case((*EXPLAIN, "--out", "{ws}/note.txt/x.mp4"), ("note.txt", "is a file")),
    "explain-out-is-folder": Case((*EXPLAIN, "--out", "{ws}/adir.mp4", "--force"), ("adir.mp4", "folder")),
    "explain-fps-inf": Case((*EXPLAIN, "--fps", "inf", "--out", "{ws}/x.mp4"), ("--fps", "inf")),
    "explain-fps-nan": Case((*EXPLAIN, "--fps", "nan", "--out", "{ws}/x.mp4"), ("--fps", "nan")),
    "explain-checkpoint-pickled": Case(("explain", "--checkpoint", "{pickled}", "--env", FAKE_ID, "--out", "{ws}/x.mp4"),
                                       ("pickle",), ("header too large",)),
    # export: all before the export
    "export-out-exists": Case((*EXPORT, "--out", "{ws}/step.onnx"), ("step.onnx", "--force"), no_work=NO_EXPORT),
    "export-out-under-file": Case((*EXPORT, "--out", "{ws}/note.txt/x.onnx"), ("note.txt", "is a file"), no_work=NO_EXPORT),
    "export-out-is-folder": Case((*EXPORT, "--out", "{ws}/adir.onnx", "--force"), ("adir.onnx", "folder"), no_work=NO_EXPORT),
    "export-checkpoint-pickled": Case(("export", "--checkpoint", "{pickled}", "--out", "{ws}/x.onnx"), ("pickle",),
                                      ("header too large",), no_work=NO_EXPORT),
    "export-bad-opset": Case((*EXPORT, "--out", "{ws}/x.onnx", "--opset", "3"), ("--opset", "3"), no_work=NO_EXPORT),
    # preview
    "preview-out-under-file": Case(("preview", "--out", "{ws}/note.txt/p.png"), ("note.txt", "is a file")),
    "preview-out-not-a-png-file": Case(("preview", "--out", "{ws}/fake.png"), ("fake.png", "exists")),
    "preview-out-is-folder": Case(("preview", "--out", "{ws}/adir.png"), ("adir.png", "folder")),
    "preview-bad-frames": Case(("preview", "--out", "{ws}/p.png", "--frames", "0"), ("--frames", "0")),
    "preview-unknown-env": Case(("preview", "--env", "liquid_drive/Nope-v0", "--out", "{ws}/p.png"), ("unknown env", "nope")),
    # import: before the source is read
    "import-out-is-file": Case(("import", "--format", "donkeycar", "{ws}/report", "--out", "{ws}/note.txt"), ("note.txt", "is a file")),
    "import-out-holds-report": Case(("import", "--format", "udacity", "{ws}/report", "--out", "{ws}/report"), ("evaluation report",)),
    "import-source-missing": Case(("import", "--format", "donkeycar", "{ws}/nothing", "--out", "{ws}/new"), ("nothing", "does not exist")),
    "import-labels-without-video": Case(("import", "--format", "udacity", "{ws}/report", "--labels", "x.csv", "--out", "{ws}/new"),
                                        ("--labels", "video")),
    # demo: before the first stage
    "demo-out-is-file": Case(("demo", "--quick", "--out", "{ws}/note.txt"), ("note.txt", "is a file")),
    "demo-out-under-file": Case(("demo", "--quick", "--out", "{ws}/note.txt/d"), ("note.txt", "is a file")),
    "demo-out-holds-run": Case(("demo", "--quick", "--out", "{ckpt}"), ("training run",)),
    "demo-out-holds-dataset": Case(("demo", "--quick", "--out", "{ds}"), ("dataset",)),
}


def _fmt(text: str, ws: Path, fx: dict[str, Path]) -> str:
    """Fill {ws}, {ds}, {ckpt}, ... (plain replacement: the JSON arguments hold braces)."""
    for k, v in {"ws": ws, **fx}.items():
        text = text.replace("{" + k + "}", str(v))
    return text


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    except BaseException as exc:  # noqa: BLE001  (an escaping exception is a traceback)
        out, err = capsys.readouterr()
        pytest.fail(f"`driving {' '.join(argv)}` raised {type(exc).__name__}: {exc}\n{err[-2000:]}")
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, fx, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    ws = tmp_path / "ws"
    ws.mkdir()
    _workspace(ws, fx)
    if case.no_work:
        mod, fn = case.no_work.split(":")

        def _work_started(*a, **k):
            raise AssertionError(f"{case.no_work} ran: the bad input was not refused before the work")

        monkeypatch.setattr(f"{mod}.{fn}", _work_started)
    argv = [_fmt(a, ws, fx) for a in case.argv]
    before = _snapshot(ws, fx["root"])
    code, out, err = _run(argv, capsys)
    after = _snapshot(ws, fx["root"])
    assert "Traceback" not in err and "Traceback" not in out, err
    assert code == 2, f"exit {code}; stderr:\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "no message on stderr"
    msg = lines[-1]
    start = case.line or f"driving {argv[0]}: error:"
    assert msg.startswith(start), f"last stderr line is not the message: {msg!r}"
    assert sum(ln.startswith(start) for ln in lines) == 1, err
    low = msg.lower()
    for w in case.words:
        assert _fmt(w, ws, fx).lower() in low, f"{w!r} not in {msg!r}"
    for w in case.absent:
        assert w.lower() not in low, f"misleading {w!r} in {msg!r}"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files touched by a refused command: {changed}"


def test_corpus_covers_every_verb():
    from driving.cli import COMMANDS

    verbs = {c.argv[0] for c in CASES.values()}
    assert verbs == set(COMMANDS), set(COMMANDS) - verbs
    assert len(CASES) >= 40


# ------------------------------------------------------------------------- a full disk


def _fill_disk(monkeypatch, code: int = errno.ENOSPC) -> list[Path]:
    """Every atomic write starts, writes a few bytes, then the disk is full."""
    from policies import atomicio

    real = atomicio.atomic_write_with
    tried: list[Path] = []

    def full(path, write):
        tried.append(Path(path))

        def partial(f):
            f.write(b"partial")
            raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Disk quota exceeded")

        return real(path, partial)

    monkeypatch.setattr(atomicio, "atomic_write_with", full)
    return tried


def _no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]


def _assert_disk_full_line(code: int, err: str, verb: str, words: tuple[str, ...] = ()) -> None:
    assert "Traceback" not in err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"driving {verb}: error:"), lines[-1]
    low = lines[-1].lower()
    assert "no space left" in low or "quota" in low, lines[-1]
    for w in words:
        assert w.lower() in low, lines[-1]


def test_disk_full_in_eval_is_one_line(fx, tmp_path, capsys, monkeypatch):
    tried = _fill_disk(monkeypatch)
    out = tmp_path / "ev"
    code, _, err = _run([_fmt(a, tmp_path, fx) for a in EVAL] + ["--no-expert-reference", "--out", str(out)], capsys)
    _assert_disk_full_line(code, err, "eval", ("report.json", "--force"))
    assert tried and tried[0].name == "report.json"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]  # nothing half-written
    assert not _no_temp_files(tmp_path)


def test_disk_full_in_compare_keeps_the_earlier_comparison(fx, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    assert main(["compare", str(fx["rep"]), "--out", str(out), "--no-plots"]) == 0
    before = _snapshot(out)
    _fill_disk(monkeypatch, errno.EDQUOT)
    capsys.readouterr()
    code, _, err = _run(["compare", str(fx["rep"]), "--out", str(out)], capsys)
    _assert_disk_full_line(code, err, "compare", ("compare.json",))
    assert _snapshot(out) == before  # the earlier comparison is intact, no temp file left


def test_disk_full_in_export_keeps_the_old_file(fx, tmp_path, capsys, monkeypatch):
    onnx = tmp_path / "step.onnx"
    onnx.write_bytes(b"the old export")

    def full_export(step, args, f, **kw):  # torch writes part of the graph, then the disk is full
        if hasattr(f, "write"):
            f.write(b"partial graph")
        else:
            Path(f).write_bytes(b"partial graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full_export)
    code, _, err = _run(["export", "--checkpoint", str(fx["ckpt"]), "--out", str(onnx), "--force", "--no-check"], capsys)
    _assert_disk_full_line(code, err, "export", ("step.onnx",))
    assert onnx.read_bytes() == b"the old export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step.onnx"]


def test_disk_full_in_explain_still(tmp_path, capsys, monkeypatch):
    _fill_disk(monkeypatch)
    png = tmp_path / "still.png"
    code, _, err = _run(["explain", "--policy", "ncp-cfc", "--env", FAKE_ID, "--frame", "1", "--out", str(png)], capsys)
    _assert_disk_full_line(code, err, "explain", ("still.png",))
    assert list(tmp_path.iterdir()) == []


def test_disk_full_in_preview(tmp_path, capsys, monkeypatch):
    _fill_disk(monkeypatch)
    code, _, err = _run(["preview", "--env", "liquid_drive/Racetrack-v0", "--frames", "1", "--scale", "1",
                         "--out", str(tmp_path / "p.png")], capsys)
    _assert_disk_full_line(code, err, "preview", ("p.png",))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- the helpers


def test_detect_kind_names_each_output(fx, tmp_path):
    assert outputs.detect_kind(fx["ds"])[0] == "dataset"
    assert outputs.detect_kind(fx["ckpt"])[0] == "run"
    assert outputs.detect_kind(fx["rep"]) == ("report", "report.json")
    assert outputs.detect_kind(tmp_path) is None
    (tmp_path / "episodes").mkdir()  # a store killed while being created is still a dataset
    assert outputs.detect_kind(tmp_path) == ("dataset", "episodes")


def test_check_out_dir_rules(fx, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(outputs.UserError, match="is a file"):
        outputs.check_out_dir(tmp_path / "f" / "a" / "b", "report")
    with pytest.raises(outputs.UserError, match="is a file, not a folder"):
        outputs.check_out_dir(tmp_path / "f", "report")
    with pytest.raises(outputs.UserError, match="--force"):
        outputs.check_out_dir(fx["rep"], "report")
    assert outputs.check_out_dir(fx["rep"], "report", force=True) == fx["rep"]
    assert outputs.check_out_dir(fx["ds"], "dataset", existing="append") == fx["ds"]
    with pytest.raises(outputs.UserError, match="holds a liquid-drive dataset"):
        outputs.check_out_dir(fx["ds"], "report", force=True)  # --force never crosses kinds
    assert outputs.check_out_dir(tmp_path / "new" / "deeper", "report") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(ValueError, match="unknown output kind"):
        outputs.check_out_dir(tmp_path, "video")


def test_empty_and_broken_link_outs(tmp_path):
    with pytest.raises(outputs.UserError, match="--out is empty"):
        outputs.check_out_dir("", "report")
    with pytest.raises(outputs.UserError, match="--out is empty"):
        outputs.check_out_file(" ")
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "nowhere")
    for check in (lambda: outputs.check_out_dir(link, "report"), lambda: outputs.check_out_file(link)):
        with pytest.raises(outputs.UserError, match="broken symbolic link"):
            check()


def test_unwritable_folder_is_refused(tmp_path, monkeypatch):
    import os

    real = os.access
    ro = tmp_path / "ro"
    ro.mkdir()
    # root can write anywhere, so stand in for a read-only place through os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    with pytest.raises(outputs.UserError, match="not writable"):
        outputs.check_out_dir(ro / "ev", "report")
    with pytest.raises(outputs.UserError, match="not writable"):
        outputs.check_out_dir(ro, "report")
    with pytest.raises(outputs.UserError, match="not writable"):
        outputs.check_out_file(ro / "x.onnx")


def test_check_out_file_rules(tmp_path):
    (tmp_path / "old.png").write_bytes(PNG + b"...")
    (tmp_path / "text.png").write_text("hello")
    assert outputs.check_out_file(tmp_path / "old.png", overwrite_if=PNG) == tmp_path / "old.png"
    with pytest.raises(outputs.UserError, match="exists"):
        outputs.check_out_file(tmp_path / "text.png", overwrite_if=PNG)
    with pytest.raises(outputs.UserError, match="--force"):
        outputs.check_out_file(tmp_path / "old.png")
    with pytest.raises(outputs.UserError, match=r"\.onnx"):
        outputs.check_out_file(tmp_path / "x.txt", suffixes=(".onnx",))
    with pytest.raises(outputs.UserError, match="does not exist; create it first"):
        outputs.check_out_file(tmp_path / "no" / "x.png")
    assert outputs.check_out_file(tmp_path / "no" / "x.png", make_parents=True)


def test_writing_names_the_file_not_the_temp(tmp_path):
    tmp = tmp_path / ".report.json.0123456789ab.tmp"
    with pytest.raises(outputs.UserError) as exc:
        with outputs.writing(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert str(tmp_path / "report.json") in str(exc.value) and ".tmp" not in str(exc.value)
    assert "\n" not in str(exc.value)
    with pytest.raises(outputs.UserError, match="permission denied"):
        with outputs.writing(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x.png"))
    with pytest.raises(PermissionError):  # not under --out: not ours to explain
        with outputs.writing(tmp_path / "out"):
            raise PermissionError(errno.EACCES, "Permission denied", "/etc/shadow")
    with pytest.raises(OSError, match="Input/output"):  # other errors are real faults
        with outputs.writing(tmp_path):
            raise OSError(errno.EIO, "Input/output error")


def test_video_cut_short_by_a_full_disk_never_replaces_the_old_one(tmp_path, monkeypatch):
    from driving.explain import video

    good = tmp_path / "good.mp4"
    w = video.FrameWriter(str(good), 10.0)
    for i in range(4):
        w.append(np.full((64, 96, 3), 40 * i, np.uint8))
    w.close()
    assert video._mp4_complete(str(good))
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    for n in (len(data) - 1, len(data) // 2, 7):
        cut.write_bytes(data[:n])
        assert not video._mp4_complete(str(cut)), n
    # ffmpeg hit a full disk (imageio-ffmpeg does not say so): the old video stays, no temp left
    old = tmp_path / "old.mp4"
    old.write_bytes(data)
    monkeypatch.setattr(video, "_mp4_complete", lambda p: False)
    monkeypatch.setattr(video, "_no_space_left", lambda d: True)
    w = video.FrameWriter(str(old), 10.0)
    w.append(np.zeros((64, 96, 3), np.uint8))
    with pytest.raises(OSError) as exc:
        w.close()
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(old)
    assert old.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4", "good.mp4", "old.mp4"]


def test_real_entry_point_eval_onto_a_file(fx, tmp_path):
    """The installed entry point (a subprocess): exit 2, one stderr line, before any episode."""
    import subprocess
    import sys

    note = tmp_path / "note.txt"
    note.write_text("keep me\n")
    argv = [sys.executable, "-m", "driving", "eval", "--checkpoint", str(fx["ckpt"]), "--env",
            "liquid_drive/Racetrack-v0", "--episodes", "50", "--out", str(note)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("driving eval: error:") and "is a file" in lines[0]
    assert note.read_text() == "keep me\n"


def test_env_config_type_check_accepts_every_valid_spelling():
    """The type check behind the env-kwargs cases refuses by the default's type, never a valid value."""
    import gymnasium as gym

    import envs  # noqa: F401

    env = gym.make("liquid_drive/Racetrack-v0", speed_mps=np.float32(9.0), randomize=0, shadows=np.bool_(False),
                   lane_width_m=3.5, max_steps=np.int64(50), camera={"height": 32, "width": 64},
                   expert={"lookahead_time_s": 1})
    cfg = env.unwrapped.config
    assert cfg["speed_mps"] == [9.0, 9.0] and cfg["max_steps"] == 50 and cfg["camera"]["height"] == 32
    env.close()
    env = gym.make("liquid_drive/RandomRoad-v0", road_seed=None, speed_mps=[8, 12], split="test")
    env.close()
    for bad, words in [({"max_steps": "50"}, "max_steps = '50'"), ({"shadows": "no"}, "true or false"),
                       ({"speed_mps": [8, "x"]}, "speed_mps"), ({"expert": {"lookahead_time_s": None}}, "expert.lookahead_time_s"),
                       ({"policy_frequency": float("nan")}, "policy_frequency = nan")]:
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace(".", r"\.")):
            gym.make("liquid_drive/Racetrack-v0", **bad)


def test_gif_cut_short_by_a_full_disk_leaves_no_temp_and_no_stray_traceback(tmp_path, monkeypatch):
    import builtins
    import gc
    import io
    import sys

    from driving.explain import video

    class FullDisk(io.RawIOBase):  # every write fails, as on a full filesystem
        def writable(self):
            return True

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(file, mode="r", *a, **k):
        f = builtins.open(file, mode, *a, **k)
        if "w" not in mode:
            return f
        f.close()  # the file exists (created before the disk filled up); its data cannot land
        return io.BufferedWriter(FullDisk())

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr("imageio.core.request.open", full_open, raising=False)
    w = video.FrameWriter(str(tmp_path / "v.gif"), 10.0)
    w.append(np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(OSError) as exc:
        w.close()
    assert exc.value.errno == errno.ENOSPC
    del w, exc  # the traceback holds the writer too
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    assert not unraisable, [str(u.exc_value) for u in unraisable]  # no retry of the failed close


def test_ffmpeg_quitting_on_a_full_disk_is_reported_as_enospc(tmp_path, monkeypatch):
    from driving.explain import video

    w = video.FrameWriter(str(tmp_path / "v.mp4"), 10.0)

    def quit_(frame):
        raise OSError("[Errno 32] Broken pipe\n\nFFMPEG COMMAND:\nffmpeg ...")  # imageio-ffmpeg's bare IOError

    monkeypatch.setattr(w._w, "append_data", quit_)
    monkeypatch.setattr(video, "_no_space_left", lambda d: True)
    with pytest.raises(OSError) as exc:
        w.append(np.zeros((64, 96, 3), np.uint8))
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(tmp_path / "v.mp4")
    monkeypatch.setattr(video, "_no_space_left", lambda d: False)
    with pytest.raises(OSError, match="Broken pipe"):  # room on the disk: ffmpeg's own error stands
        w.append(np.zeros((64, 96, 3), np.uint8))
    w.close(keep=False)
    assert list(tmp_path.iterdir()) == []

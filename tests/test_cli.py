"""The CLI contract (docs/architecture.md, CLI): every verb has --help, bad input exits 2."""

import subprocess
import sys

import pytest

from driving.cli import COMMANDS, build_parser, main


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "liquid" in out


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["no-such-verb"])
    assert exc.value.code == 2


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_each_registered_verb_has_help(verb, capsys):
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert verb in choices, f"verb {verb!r} is not registered"
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert verb in capsys.readouterr().out


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "driving", "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert "liquid-drive" in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "/nonexistent/data", "--policy", "ncp-cfc", "--out", "/tmp/x-run"],
        ["eval", "--checkpoint", "/nonexistent/run", "--env", "liquid_drive/Racetrack-v0",
         "--out", "/tmp/x-eval"],
        ["collect", "--env", "liquid_drive/NoSuchEnv-v0", "--episodes", "1", "--steps", "5",
         "--out", "/tmp/x-never-created"],
        ["train", "--data", "/nonexistent/data", "--policy", "no-such-policy", "--out", "/tmp/x"],
    ],
)
def test_bad_input_exits_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"driving {argv[0]}: error:")


# ------------------------------------------------------------------ a full disk, --force


def test_full_disk_anywhere_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".p.png.0a1b2c3d4e5f.tmp"))

    monkeypatch.setattr("driving.commands.preview.preview_image", full)
    assert main(["preview", "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("driving preview: error: no space left on device")
    assert str(tmp_path / "p.png") in err[0] and ".tmp" not in err[0]  # the file, not the temp


def test_other_os_errors_are_not_hidden(tmp_path, monkeypatch):
    import errno

    def broken(*a, **k):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("driving.commands.preview.preview_image", broken)
    with pytest.raises(OSError, match="Input/output"):  # a real fault keeps its traceback
        main(["preview", "--out", str(tmp_path / "p.png")])


@pytest.mark.parametrize("verb", ["eval", "explain", "export"])
def test_overwriting_verbs_document_force(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    assert "--force" in capsys.readouterr().out


def test_force_replaces_an_earlier_still_and_report(tmp_path, capsys):
    import json

    import tests.fake_drive_env  # noqa: F401
    from policies.checkpoint import save_checkpoint
    from policies.factory import build_policy
    from tests.fake_drive_env import FAKE_ID

    png = tmp_path / "still.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nold")
    argv = ["explain", "--policy", "ncp-cfc", "--env", FAKE_ID, "--frame", "1", "--out", str(png)]
    assert main(argv) == 2 and png.read_bytes().endswith(b"old")
    assert main([*argv, "--force"]) == 0
    assert png.stat().st_size > 10_000
    run = tmp_path / "run"
    save_checkpoint(run, build_policy("ncp-cfc", image_hw=(16, 24)), {})
    ev = tmp_path / "ev"
    ev.mkdir()  # an empty folder is fine without --force
    argv = ["eval", "--checkpoint", str(run), "--env", FAKE_ID, "--env-config", '{"height": 16, "width": 24}',
            "--episodes", "1", "--steps", "4", "--corruptions", "none", "--no-plots", "--out", str(ev)]
    assert main(argv) == 0
    first = json.loads((ev / "report.json").read_text())
    (ev / "report.json").write_text(json.dumps({**first, "policy": "edited"}))
    capsys.readouterr()
    assert main(argv) == 2  # an earlier report: refused before any episode
    assert "--force" in capsys.readouterr().err
    assert json.loads((ev / "report.json").read_text())["policy"] == "edited"
    assert main([*argv, "--force"]) == 0
    assert json.loads((ev / "report.json").read_text()) == first  # same seed: the same report again

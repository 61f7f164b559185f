"""The CLI contract of DESIGN.md §5: every verb has --help, bad input exits 2."""

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

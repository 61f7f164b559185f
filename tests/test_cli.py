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
    if verb not in choices:
        pytest.skip(f"verb {verb!r} not built")
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

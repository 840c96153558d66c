"""The CLI frame: exit codes, one-line errors, help on every command (sqlite-utils style)."""

import pytest

import cli


def _subcommands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_every_command_and_option_is_documented():
    for name, parser in _subcommands().items():
        assert parser.description and "Example" in parser.description, f"{name}: --help needs an example"
        for action in parser._actions:
            if action.dest != "help" and action.option_strings:
                assert action.help, f"{name} {action.option_strings}: no help text"


def test_help_exits_zero(capsys):
    assert cli.main(["--help"]) == 0
    assert "sencache-calibrate" in capsys.readouterr().out


def test_no_command_is_bad_input():
    assert cli.main([]) == 2


def test_bad_model_is_one_line_and_exit_2(capsys):
    code = cli.main(["generate", "--model", "no-such-model", "--prompt", "a red circle"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_generate_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert cli.main(["--quiet", "generate", "--model", "tiny-wan", "--prompt", "a red circle", "--steps", "2",
                     "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size[0] == 9 * 32 * 3  # 9 frames, 32 px, upscaled x3

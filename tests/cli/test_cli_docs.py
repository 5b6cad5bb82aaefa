"""docs/cli.md is generated from the parsers (scripts/gen_cli_docs.py) and must match them."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_md_matches_the_parsers(load_script) -> None:
    gen = load_script("gen_cli_docs")
    assert DOC.read_text(encoding="utf-8") == gen.render(), (
        "docs/cli.md is out of date: run `python scripts/gen_cli_docs.py`"
    )


def test_cli_md_names_every_command_and_option(load_script) -> None:
    # The comparison above is only as good as render(): check it covers every sub-command and
    # every option string of every parser, so a command missing from the walk cannot pass.
    import argparse

    from hsae.cli import build_parser

    gen = load_script("gen_cli_docs")
    text = gen.render()
    pending = [(("hsae",), build_parser())]
    while pending:
        path, parser = pending.pop()
        assert f"## {' '.join(path)}\n" in text
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, f"{' '.join(path)} {option} missing from docs/cli.md"
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(((*path, name), sub) for name, sub in action.choices.items())


def test_check_mode_reports_a_stale_file(load_script, tmp_path, capsys) -> None:
    gen = load_script("gen_cli_docs")
    stale = tmp_path / "cli.md"
    stale.write_text("# an old reference\n", encoding="utf-8")
    assert gen.main(["--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert gen.main(["--out", str(stale)]) == 0
    assert gen.main(["--check", "--out", str(stale)]) == 0

"""The documentation is complete and true (sqlite-utils' habit: a test walks every command).

CLI: every command and sub-command (nested ones such as `store merge` and `zoo train` included)
has a description with an "Example" naming the command, every option and positional argument has
help text, every example line parses with the real parser, and every `--help` renders.

README.md: the fenced ```python blocks run, in order and in one namespace, in a fresh Python
process (blocks fenced ```python skip, ```text, ```console, ... are not run); the
`sencache-calibrate ...` lines of its shell blocks parse with the real parser.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PROG = "sencache-calibrate"
SHELL_LANGS = {"console", "shell", "sh", "bash", "shell-session"}
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "2>", "2>&1"}


# --- the CLI ---------------------------------------------------------------------------------


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), summary: str | None = None):
    """(command path, parser, its one-line help in the parent's list) for `parser` and every sub-command."""
    yield path, parser, summary
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases map to a parser already walked
                    seen.add(id(sub))
                    yield from _walk(sub, path + (name,), summaries.get(name))


COMMANDS = [(path, parser, summary) for path, parser, summary in _walk(cli.build_parser()) if path]
IDS = [" ".join(path) for path, _, _ in COMMANDS]


def _example_lines(description: str) -> list[str]:
    """The `sencache-calibrate ...` lines after "Example" in a description."""
    after = description.split("Example", 1)[1] if "Example" in description else ""
    return [line.strip() for line in after.splitlines() if line.strip().startswith(PROG + " ")]


def _argv(command_line: str) -> list[str]:
    """The arguments of one shell command line, up to the first shell operator."""
    words = shlex.split(command_line, comments=True)
    for i, word in enumerate(words):
        if word in SHELL_OPERATORS:
            words = words[:i]
            break
    assert words and words[0] == PROG, command_line
    return words[1:]


def _parses(argv: list[str]) -> str | None:
    """None when the real parser accepts `argv`, else argparse's complaint."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.build_parser().parse_args(argv)
    except SystemExit as exc:  # --help exits 0: that parses
        return None if exc.code in (0, None) else (err.getvalue().strip() or f"exit {exc.code}")
    return None


def test_the_walk_reaches_nested_commands():
    # Guard for the tests below: the walk must see sub-sub-commands, not only the first level.
    assert ("store", "merge") in [path for path, _, _ in COMMANDS]
    assert ("zoo", "train") in [path for path, _, _ in COMMANDS]


def test_the_program_has_a_description():
    parser = cli.build_parser()
    assert parser.description and parser.prog == PROG


@pytest.mark.parametrize(("path", "parser", "summary"), COMMANDS, ids=IDS)
def test_every_command_has_a_description_with_an_example(path, parser, summary):
    name = " ".join(path)
    assert summary, f"`{PROG} {name}` has no one-line help in its parent's command list"
    assert parser.description, f"`{PROG} {name} --help` has no description"
    assert "Example" in parser.description, f"`{PROG} {name} --help` needs an 'Example' section"
    examples = _example_lines(parser.description)
    assert any(line.startswith(f"{PROG} {name}") for line in examples), (
        f"`{PROG} {name} --help`: no example line starts with `{PROG} {name}`"
    )


@pytest.mark.parametrize(("path", "parser", "summary"), COMMANDS, ids=IDS)
def test_every_option_and_argument_has_help(path, parser, summary):
    name = " ".join(path) or PROG
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS and action.help.strip(), (
            f"`{PROG} {name}`: {label} has no help text"
        )


@pytest.mark.parametrize(("path", "parser", "summary"), COMMANDS, ids=IDS)
def test_every_example_parses(path, parser, summary):
    # An example that uses a flag the command does not have is a lie in the docs.
    for line in _example_lines(parser.description or ""):
        problem = _parses(_argv(line))
        assert problem is None, f"`{PROG} {' '.join(path)} --help` example does not parse: {line!r}: {problem}"


def test_every_help_renders():
    # A stray '%' in a help string only breaks when --help is asked for.
    for path, parser, _ in _walk(cli.build_parser()):
        assert parser.format_help().startswith("usage:"), " ".join(path)


def test_the_top_level_options_have_help():
    for action in cli.build_parser()._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            assert action.help, f"{PROG} {'/'.join(action.option_strings)}: no help text"


# --- the README ------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`]*)$")


def fenced_blocks(text: str) -> list[dict]:
    """Fenced code blocks of Markdown `text`: info string, first code line (1-based), code."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, info = opening.group(1), opening.group(2).strip()
        body, j = [], i + 1
        while j < len(lines):
            close = re.match(r"^ {0,3}(`{3,}|~{3,})\s*$", lines[j])
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence):
                break
            body.append(lines[j])
            j += 1
        blocks.append({"info": info, "line": i + 2, "code": "\n".join(body) + "\n"})
        i = j + 1
    return blocks


def runnable(block: dict) -> bool:
    """A ```python block runs; ```python skip (or any other info string) does not."""
    return block["info"].split() == ["python"]


def test_fence_parser():
    # The README tests below are only as good as this parser: a block it missed would never run.
    text = "\n".join([
        "# Title", "```python", "x = 1", "```", "", "```python skip", "import gpu_only", "```",
        "~~~console", "$ sencache-calibrate --help", "~~~", "````python", "```", "y = 2", "````",
        "```text", "out", "```",
    ])
    blocks = fenced_blocks(text)
    assert [b["info"] for b in blocks] == ["python", "python skip", "console", "python", "text"]
    assert [b["line"] for b in blocks if runnable(b)] == [3, 13]
    assert [b["code"] for b in blocks if runnable(b)] == ["x = 1\n", "```\ny = 2\n"]


def _readme() -> str:
    if not README.exists():
        pytest.skip("README.md does not exist yet (the lead writes it); its ```python blocks will run here once it does")
    return README.read_text(encoding="utf-8")


_DRIVER = """\
import json, sys, traceback
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for block in blocks:
    code = compile("\\n" * (block["line"] - 1) + block["code"], "README.md", "exec")
    try:
        exec(code, namespace)
    except BaseException:
        traceback.print_exc()
        print(f"README.md: the python block at line {block['line']} failed", file=sys.stderr)
        sys.exit(1)
"""


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    blocks = [b for b in fenced_blocks(_readme()) if runnable(b)]
    if not blocks:
        pytest.skip("README.md has no ```python block to run (blocks fenced ```python skip are not run)")
    # Run from a scratch folder that mirrors the repository (symlinks), so relative paths such as
    # policies/toy-wan.json resolve as from a clone while files the snippets write land in tmp.
    work = tmp_path / "clone"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"}:
            (work / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (tmp_path / "blocks.json").write_text(json.dumps(blocks), encoding="utf-8")
    (tmp_path / "driver.py").write_text(_DRIVER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "blocks.json")], cwd=work,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"README.md python blocks failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def readme_command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every `sencache-calibrate ...` the README shows: lines of its shell
    blocks (a leading `$ ` prompt dropped, `\\` continuations joined) and inline code spans."""
    found = []
    for block in fenced_blocks(text):
        if (block["info"].split() or [""])[0] not in SHELL_LANGS:
            continue
        pending, first = "", 0
        for offset, raw in enumerate(block["code"].splitlines()):
            first = first if pending else offset
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1].rstrip() + " "
                continue
            pending = ""
            command = line[2:] if line.startswith("$ ") else line
            if command == PROG or command.startswith(PROG + " "):
                found.append((block["line"] + first, command))
    fenced = {b["line"] + k for b in fenced_blocks(text) for k in range(-1, len(b["code"].splitlines()) + 1)}
    for number, line in enumerate(text.splitlines(), start=1):
        if number not in fenced:
            found += [(number, span) for span in re.findall(r"`(" + PROG + r"(?: [^`]*)?)`", line)]
    return found


def test_readme_command_lines_are_found():
    text = "\n".join(["Run `sencache-calibrate fit --db a.duckdb` now.", "```console",
                      "$ sencache-calibrate store merge \\", "    --out c.duckdb", "output line", "```",
                      "```bash", "sencache-calibrate zoo train toy-wan  # retrain", "```"])
    assert readme_command_lines(text) == [
        (3, "sencache-calibrate store merge --out c.duckdb"),
        (8, "sencache-calibrate zoo train toy-wan  # retrain"),
        (1, "sencache-calibrate fit --db a.duckdb"),
    ]


def test_readme_commands_parse():
    # Every command the README shows must exist with the flags it shows (it is parsed, not run).
    lines = readme_command_lines(_readme())
    if not lines:
        pytest.skip(f"README.md shows no `{PROG}` command")
    bad = [f"line {n}: `{c}`: {p}" for n, c in lines if (p := _parses(_argv(c))) is not None]
    assert not bad, "README.md shows commands the CLI does not accept:\n" + "\n".join(bad)


# --- docs/design.md ---------------------------------------------------------------------------

DESIGN = ROOT / "docs" / "design.md"
#: `(docs/design.md, "The rule")`: a citation of one section; the name may wrap over lines
_CITATION = re.compile(r'docs/design\.md\s*[,:]\s*"([^"]+)"')
_SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "node_modules"}


def _design() -> str:
    return DESIGN.read_text(encoding="utf-8")


def design_headings(text: str) -> set[str]:
    """The text of every Markdown heading (`#` to `######`) outside fenced blocks."""
    fenced = {b["line"] + k for b in fenced_blocks(text) for k in range(-1, len(b["code"].splitlines()) + 1)}
    return {m.group(1).strip() for n, line in enumerate(text.splitlines(), start=1)
            if n not in fenced and (m := re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line))}


def _sources(root: Path) -> list[Path]:
    """The repository's .py and .md files, but the design itself and this file (which cites examples)."""
    return [path for path in sorted(root.rglob("*"))
            if path.suffix in {".py", ".md"} and not _SKIP_DIRS & set(path.relative_to(root).parts)
            and path not in (DESIGN, Path(__file__).resolve())]


def design_citations(root: Path = ROOT) -> list[tuple[str, str]]:
    """(file, section) for every `docs/design.md, "<section>"` in the repository's .py and .md files."""
    found = []
    for path in _sources(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in _CITATION.finditer(text):
            found.append((str(path.relative_to(root)), " ".join(m.group(1).split())))
    return found


def test_citation_scanner_reads_wrapped_names(tmp_path):
    # Guard for the test below: a docstring may wrap the section name over two lines.
    (tmp_path / "a.py").write_text('"""x (docs/design.md, "What an\n    experiment found") y."""\n')
    (tmp_path / "b.md").write_text('see docs/design.md: "The rule"\n')
    assert design_citations(tmp_path) == [("a.py", "What an experiment found"), ("b.md", "The rule")]
    assert design_headings("# A\n```\n# not a heading\n```\n## B c ##\n") == {"A", "B c"}


def test_nothing_cites_the_design_outside_the_repository():
    # The design used to live in a DESIGN.md outside the repository; citations go to docs/design.md.
    stale = [(str(path.relative_to(ROOT)), line.strip()) for path in _sources(ROOT)
             for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if "DESIGN.md" in line]
    assert not stale, f"cite docs/design.md instead of DESIGN.md: {stale}"


def test_every_cited_section_of_the_design_exists():
    # Code and tests cite the design by section; a renamed or dropped section breaks the citation.
    citations = design_citations()
    assert len(citations) >= 6, f"the scan found only {citations}: is the citation pattern still used?"
    headings = design_headings(_design())
    missing = [f"{file}: {section!r}" for file, section in citations if section not in headings]
    assert not missing, f"docs/design.md has no heading for: {missing}; its headings: {sorted(headings)}"


def policy_format_tables(text: str) -> dict[str, dict[str, str]]:
    """From the "The policy format" section: object -> {field: its type cell}.

    The object is named by the line above each table: "Top level" -> "", "`model` (`ModelInfo`):"
    -> "model", "Each of `operating_points` ...:" -> "operating_points".
    """
    section = text.split("\n## The policy format\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, dict[str, str]] = {}
    current, lines = None, section.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| field |"):
            label = next(lines[j] for j in range(i - 1, -1, -1) if lines[j].strip())
            current = "" if label.startswith("Top level") else re.search(r"`([a-z_]+)`", label).group(1)
            tables[current] = {}
        elif current is not None and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables[current][cells[0].strip("`")] = cells[1]
        elif not line.startswith("|"):
            current = None
    return tables


def test_the_policy_format_tables_are_the_fields_policies_writes():
    # The specification in docs/design.md must list exactly the keys `Policy.to_dict()` writes,
    # object by object, and mark as optional exactly the optional ones.
    from policies import ModelInfo, OperatingPoint, Policy, Predictor, SchedulerInfo, SensitivityTable
    from policies.policy import KEYS
    from policies.schedule import StaticSchedule

    tables = policy_format_tables(_design())
    assert set(tables) == {"", "model", "scheduler", "sensitivity", "predictors", "operating_points", "schedule"}
    assert list(tables[""]) == list(KEYS)
    for name, cls in (("model", ModelInfo), ("scheduler", SchedulerInfo), ("sensitivity", SensitivityTable),
                      ("predictors", Predictor), ("schedule", StaticSchedule)):
        assert list(tables[name]) == list(cls.KEYS + getattr(cls, "OPTIONAL_KEYS", ())), name
        assert [k for k, kind in tables[name].items() if "optional" in kind] == list(getattr(cls, "OPTIONAL_KEYS", ()))
    point_fields = tables["operating_points"]
    static_only = [k for k, kind in point_fields.items() if "static points only" in kind]
    assert static_only == [k for k in OperatingPoint.STATIC_KEYS if k not in OperatingPoint.KEYS]
    assert set(point_fields) == set(OperatingPoint.KEYS + OperatingPoint.STATIC_KEYS + OperatingPoint.OPTIONAL_KEYS)
    optional = [k for k, kind in point_fields.items() if "optional" in kind]
    assert optional == list(OperatingPoint.OPTIONAL_KEYS)
    written_points: set[str] = set()
    for shipped in sorted((ROOT / "policies").glob("*.json")):
        data = Policy.load(shipped).to_dict()
        assert set(data) == set(tables[""]), shipped.name
        for name in ("model", "scheduler", "sensitivity"):
            assert set(data[name]) == set(tables[name]), f"{shipped.name}: {name}"
        for mode, predictor in data["predictors"].items():
            assert set(predictor) <= set(tables["predictors"]), f"{shipped.name}: predictors.{mode}"
        for point in data["operating_points"]:
            assert set(point) <= set(point_fields), f"{shipped.name}: {sorted(set(point) - set(point_fields))}"
            written_points |= set(point)
    assert written_points == set(point_fields), "the shipped policies should show every field, `forecast` too"


def _toy_policy() -> dict:
    """A shipped policy with both a score-driven and a static point (toy-wan's are all score-driven)."""
    for path in sorted((ROOT / "policies").glob("*.json")):
        data = json.loads(path.read_text())
        if len({"schedule" in p for p in data["operating_points"]}) == 2:
            return data
    raise AssertionError("no shipped policy has both a score-driven and a static point")


def _objects(data: dict) -> dict[str, dict]:
    points = data["operating_points"]
    scored = next(p for p in points if "schedule" not in p)
    static = next(p for p in points if "schedule" in p)
    return {"": data, "model": data["model"], "scheduler": data["scheduler"], "sensitivity": data["sensitivity"],
            "predictors": data["predictors"]["none"], "operating_points": scored, "schedule": static["schedule"],
            "static_point": static}


FORMAT_FIELDS = [(obj, f) for obj, fields in policy_format_tables(DESIGN.read_text(encoding="utf-8")).items()
                 for f in fields] if DESIGN.exists() else []


@pytest.mark.parametrize(("obj", "field"), FORMAT_FIELDS, ids=[f"{o or 'top'}.{f}" for o, f in FORMAT_FIELDS])
def test_loading_refuses_a_policy_without_a_required_field(obj, field):
    # docs/design.md, "The policy format": "a missing key, or a key that is not listed, is refused".
    from policies import Policy, PolicyError

    tables = policy_format_tables(_design())
    data = _toy_policy()
    target = obj
    if obj == "operating_points" and "static points only" in tables[obj][field]:
        target = "static_point"  # a score-driven point has no schedule to leave out
    assert field in _objects(data)[target] or "optional" in tables[obj][field], f"the toy policy shows no {field}"
    _objects(data)[target].pop(field, None)
    if "optional" in tables[obj][field]:
        Policy.from_dict(data)  # an optional field may be left out
        return
    with pytest.raises(PolicyError, match=re.escape(field)):
        Policy.from_dict(data)


@pytest.mark.parametrize("obj", ["", "model", "scheduler", "sensitivity", "predictors", "operating_points", "schedule"])
def test_loading_refuses_a_field_the_format_does_not_list(obj):
    from policies import Policy, PolicyError

    data = _toy_policy()
    _objects(data)[obj]["colour"] = "blue"
    with pytest.raises(PolicyError, match="colour.*not a field"):
        Policy.from_dict(data)

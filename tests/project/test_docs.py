"""README.md and docs/*.md stay true: the README is a short front door, every relative link
and anchor resolves, Python examples compile, and every command line, flag and keyword
argument they show exists in the code.

Only fenced blocks tagged ``python`` (or ``py``) are compiled: write other fragments as
``text``. Shell lines are checked when they run ``sente-lite``, ``python -m sente_lite``,
``python run_all_tests.py`` or a scenario script.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import glob
import importlib.util
import inspect
import io
import re
import shlex
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest

from sente_lite import JWT, Client, Server, cli
from sente_lite.brokers.redis.broker import RedisBroker
from sente_lite.testing import scenario
from support import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
#: The README is a front door: what it is, quick start, one example per use. Reference goes in docs/.
MAX_README_LINES = 300
#: The two commands a newcomer runs after cloning, exactly as the README must show them.
QUICK_START = ("pip install -e '.[test]' && python run_all_tests.py", "python -m pytest -q")
#: Callables whose keyword arguments the docs show, by the name they are called with.
SIGNATURES = {"Server": Server.__init__, "Client": Client.__init__, "RedisBroker": RedisBroker.__init__,
              "JWT": JWT.__init__}
#: Repository folders whose paths, written in inline code, must exist.
PATH_ROOTS = ("sente_lite/", "tests/", "test_scripts/", "docs/", ".ci/")

FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HTML_REF = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.I)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)=\"([^\"]+)\"", re.I)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


# ---------------------------------------------------------------- reading markdown

def fenced_blocks(text: str) -> List[Tuple[str, str, int]]:
    """``(language, code, line number of the fence)`` of every fenced block."""
    return [(m.group(1).lower(), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text outside fenced blocks (blocks blanked, so line numbers hold)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def without_inline_code(text: str) -> str:
    return INLINE_CODE.sub(lambda m: " " * len(m.group(0)), text)


def inline_code(text: str) -> List[str]:
    """Every inline code span outside fenced blocks."""
    return [m.group(2).strip() for m in INLINE_CODE.finditer(prose(text))]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*\*|__|\*)(.+?)\1", r"\2", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    """Every anchor of a markdown file: its headings' slugs (numbered when repeated) and
    explicit ``<a id>`` / ``<a name>``."""
    text = path.read_text(encoding="utf-8")
    found: Set[str] = set(HTML_ANCHOR.findall(text))
    seen: Dict[str, int] = {}
    for line in prose(text).splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> List[Tuple[str, int]]:
    """``(target, line)`` of every link and image in ``path`` that is not absolute (no scheme)."""
    text = without_inline_code(prose(path.read_text(encoding="utf-8")))
    out = []
    for pattern in (LINK, REF_DEF, HTML_REF):
        for m in pattern.finditer(text):
            target = m.group(1)
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, mailto:, ...
                out.append((target, text.count("\n", 0, m.start()) + 1))
    return out


def link_problem(page: Path, target: str, root: Path = REPO) -> Optional[str]:
    """Why ``target`` (as written in ``page``) does not resolve inside ``root``, or None."""
    file_part, _, anchor = target.partition("#")
    dest = (page.parent / file_part).resolve() if file_part else page
    if not dest.exists():
        return f"{file_part} does not exist"
    if not dest.is_relative_to(root):
        return f"{file_part} is outside the repository"
    if anchor:
        if dest.suffix != ".md":
            return f"an anchor into {dest.name}, which is not markdown"
        if anchor not in anchors(dest):
            return f"{dest.relative_to(root)} has no heading with anchor #{anchor}"
    return None


# ---------------------------------------------------------------- the README's size and quick start

def test_readme_is_a_front_door_of_at_most_300_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines, more than {MAX_README_LINES}: move reference material "
        "into docs/ and link it from the README's Documentation list")


def test_readme_quick_start_shows_the_two_commands_after_cloning() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)
    assert len(section) == 2, "README.md has no '## Quick start' section"
    blocks = [code for lang, code, _ in fenced_blocks(section[1].split("\n## ", 1)[0]) if lang == "bash"]
    commands = [line.split("  #", 1)[0].strip() for code in blocks for line in code.splitlines()]
    assert list(QUICK_START) == commands[:2], f"the quick start's commands are {commands}"


#: Docs pages whose README link is added when the README section they come with is merged
#: (README.md changes only at merge). Empty this once README.md links them.
README_LINK_PENDING = {"console.md"}


def test_readme_links_every_docs_page() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t, _ in relative_links(README)}
    missing = [p.name for p in DOCS if p.resolve() not in linked
               and p.name not in README_LINK_PENDING]
    assert not missing, f"README.md does not link these docs pages: {missing}"


# ---------------------------------------------------------------- links and anchors

@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = [f"line {line}: ({target}): {why}" for target, line in relative_links(page)
              if (why := link_problem(page, target))]
    assert not broken, f"{page.relative_to(REPO)} has broken links:\n" + "\n".join(broken)


def test_the_link_checker_finds_broken_links_and_anchors(tmp_path: Path) -> None:
    """The checks above would fail on a missing file, a missing anchor, or one into a
    heading that only looks alike; they accept what GitHub resolves."""
    (tmp_path / "b.md").write_text("# Some `code` Title (v2)\n\n## Again\n\n## Again\n"
                                   "\n```\n# not a heading\n```\n<a id=\"here\"></a>\n")
    page = tmp_path / "a.md"
    page.write_text("# Top\n")

    def problem(target: str) -> Optional[str]:
        return link_problem(page, target, root=tmp_path)

    assert problem("b.md#some-code-title-v2") is None
    assert problem("b.md#again-1") is None
    assert problem("b.md#here") is None
    assert problem("#top") is None
    assert problem("c.md") == "c.md does not exist"
    assert "outside" in str(problem("../" + tmp_path.name + "/../"))
    assert "no heading" in str(problem("b.md#again-2"))
    assert "no heading" in str(problem("b.md#not-a-heading"))
    assert "no heading" in str(problem("#Top"))
    page.write_text("[x](c.md) `[y](d.md)` ![i](img/e.png)\n[ref]: f.md\n<a href=\"g.md\">g</a>\n"
                    "[web](https://example.com/h.md)\n```\n[z](i.md)\n```\n")
    assert sorted(t for t, _ in relative_links(page)) == ["c.md", "f.md", "g.md", "img/e.png"]


# ---------------------------------------------------------------- Python examples

def python_blocks(page: Path) -> Iterator[Tuple[str, int]]:
    for lang, code, line in fenced_blocks(page.read_text(encoding="utf-8")):
        if lang in ("python", "py", "python3"):
            yield code, line


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_python_examples_compile(page: Path) -> None:
    for code, line in python_blocks(page):
        try:
            compile(code, f"{page.name}:{line}", "exec")
        except SyntaxError as exc:
            pytest.fail(f"{page.relative_to(REPO)}, block at line {line}: {exc}")


def keyword_problems(name: str, keywords: List[str]) -> List[str]:
    params = inspect.signature(SIGNATURES[name]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    return [f"{name}({k}=...) is not an argument" for k in keywords if k not in params]


def called_keywords(code: str) -> Iterator[Tuple[str, List[str]]]:
    """``(callable, keyword names)`` of every call of a documented class in ``code``."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in SIGNATURES:
                yield name, [k.arg for k in node.keywords if k.arg is not None]


def inline_calls(text: str) -> Iterator[Tuple[str, List[str]]]:
    """Calls written in inline code, ``Server(ssl_context=...)`` or ``Client(max_pending_sends=)``."""
    for span in inline_code(text):
        for m in re.finditer(r"\b(" + "|".join(SIGNATURES) + r")\(([^()]*)", span):
            yield m.group(1), re.findall(r"(?:^|[(,\s])([A-Za-z_]\w*)\s*=(?!=)", m.group(2))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_keyword_arguments_shown_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    calls = [c for code, _ in python_blocks(page) for c in called_keywords(code)]
    calls += list(inline_calls(text))
    problems = [p for name, kws in calls for p in keyword_problems(name, kws)]
    assert not problems, f"{page.relative_to(REPO)}: " + "; ".join(problems)


def test_the_keyword_check_catches_a_wrong_name() -> None:
    calls = list(called_keywords("srv = Server(port=1, max_conections=5)\nClient(url, tokn=1)"))
    calls += list(inline_calls("`Client(max_pending_send=)` and `Server(host, heartbeat_ms=5, x == 1)`"))
    problems = [p for name, kws in calls for p in keyword_problems(name, kws)]
    assert problems == ["Server(max_conections=...) is not an argument",
                        "Client(tokn=...) is not an argument",
                        "Client(max_pending_send=...) is not an argument"]


# ---------------------------------------------------------------- command lines

def _parse_with(parser: argparse.ArgumentParser, argv: List[str]) -> Optional[str]:
    """None when ``parser`` accepts ``argv``, else argparse's complaint."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def _runner_parser() -> Callable[[List[str]], object]:
    spec = importlib.util.spec_from_file_location("run_all_tests_docs", REPO / "run_all_tests.py")
    assert spec and spec.loader
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module.parse_args  # type: ignore[no-any-return]


def _parser_of(parse: Callable[[List[str]], object]) -> argparse.ArgumentParser:
    """Wrap a ``parse_args(argv)`` function as a parser for :func:`_parse_with`."""
    class Wrapped(argparse.ArgumentParser):
        def parse_args(self, args=None, namespace=None):  # type: ignore[override]
            return parse(list(args or []))
    return Wrapped()


def command_problem(words: List[str]) -> Optional[str]:
    """Why the command ``words`` would be refused by this repository's code, or None when
    it is fine or not one the docs check."""
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
        words = words[1:]
    if words[:1] == ["sente-lite"]:
        return _parse_with(cli.build_parser(), words[1:])
    if words[:3] == ["python", "-m", "sente_lite"]:
        return _parse_with(cli.build_parser(), words[3:])
    if words[:3] == ["python", "-m", "sente_lite.bench.fanout"]:
        return _parse_with(cli.build_parser(), ["bench", *words[3:]])
    if words[:2] == ["python", "run_all_tests.py"]:
        return _parse_with(_parser_of(_runner_parser()), words[2:])
    if words[:1] == ["python"] and len(words) > 1 and words[1].startswith("test_scripts/"):
        if not (REPO / words[1]).exists():
            return f"{words[1]} does not exist"
        return _parse_with(_parser_of(lambda a: scenario.parse_args(a, "docs")), words[2:])
    return None


def shell_commands(page: Path) -> Iterator[Tuple[List[str], int]]:
    for lang, code, line in fenced_blocks(page.read_text(encoding="utf-8")):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        for i, text in enumerate(code.splitlines()):
            for part in text.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    yield words, line + 1 + i


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_commands_shown_are_accepted(page: Path) -> None:
    problems = [f"line {line}: {' '.join(words)}: {why}" for words, line in shell_commands(page)
                if (why := command_problem(words))]
    assert not problems, f"{page.relative_to(REPO)}:\n" + "\n".join(problems)


def subcommand_options() -> Dict[str, Set[str]]:
    """The long and short options of each ``sente-lite`` subcommand."""
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for a in sub._actions for o in a.option_strings}
            for name, sub in action.choices.items()}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_flags_named_in_inline_commands_exist(page: Path) -> None:
    """```sente-lite serve --broker ...``` in prose: every ``--flag`` belongs to that subcommand."""
    options = subcommand_options()
    problems = []
    for span in inline_code(page.read_text(encoding="utf-8")):
        m = re.match(r"^(?:sente-lite|python -m sente_lite)\s+(\w+)\b(.*)$", span, re.S)
        if not m:
            continue
        if m.group(1) not in options:
            problems.append(f"`{span}`: no subcommand {m.group(1)}")
            continue
        problems += [f"`{span}`: {m.group(1)} has no {flag}"
                     for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(2))
                     if flag not in options[m.group(1)]]
    assert not problems, f"{page.relative_to(REPO)}: " + "; ".join(problems)


def test_the_command_check_catches_wrong_commands() -> None:
    assert command_problem(shlex.split("sente-lite serve --port 0 --max-conections 5"))
    assert command_problem(shlex.split("sente-lite pub news"))  # JSON missing
    assert command_problem(shlex.split("python run_all_tests.py --repeat"))
    assert command_problem(shlex.split("python test_scripts/03_restart.py"))
    assert command_problem(shlex.split("SENTE_LITE_PORT=1 sente-lite serve --port-file")) is not None
    assert command_problem(shlex.split("sente-lite sub news --port-file s.json")) is None
    assert command_problem(shlex.split("python run_all_tests.py -k 03 --repeat 10 --html r.html")) is None


def test_every_serve_setting_is_in_the_operations_table() -> None:
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^\| `(--[\w-]+)`[^|]*\| `(SENTE_LITE_\w+)`", text, re.M)}
    expected = {s.flag: s.env for s in cli.SERVE_SETTINGS}
    assert rows == expected, ("docs/operations.md's serve table differs from sente_lite/cli.py's "
                              f"SERVE_SETTINGS: missing {sorted(set(expected) - set(rows))}, "
                              f"unknown {sorted(set(rows) - set(expected))}")


# ---------------------------------------------------------------- paths named in prose

@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_repository_paths_named_exist(page: Path) -> None:
    """``sente_lite/hub.py``, ``tests/server/test_fuzz.py``, ``tests/core/test_security*.py`` ... exist."""
    missing = []
    for span in inline_code(page.read_text(encoding="utf-8")):
        path = span.split()[0] if span.split() else ""
        if path.startswith(PATH_ROOTS) and "NN" not in path and "<" not in path:
            if not glob.glob(str(REPO / path.rstrip(",;:"))):
                missing.append(path)
    assert not missing, f"{page.relative_to(REPO)} names paths that do not exist: {missing}"

"""Every example the project shows is run or parsed here: the docs pages and the README (Python blocks
executed, in order, in a scratch directory; ``forwardonly`` commands checked), every subcommand's
``--help`` examples, and the commands in the shipped YAML files' comments.

A ``forwardonly`` command is *run* where that is cheap (``configs``, ``data list``, ``models list``),
*resolved* where it is a config-driven command (``train``, ``eval``, ``demo``, ``local train`` get
``--print-config``: the flags, the config file or shipped config, every override key and value are
checked), and *parsed* otherwise (flags and arguments accepted by the parser). A fenced block preceded
by ``<!-- test: run -->`` is run for real, on the tiny test model (``model.name`` is appended).
"""

import itertools
import json
import re
import shlex
from pathlib import Path

import pytest

from forwardonly.cli.main import SUBCOMMANDS, _parse, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
PAGES = [p for p in sorted((ROOT / "docs").rglob("*.md")) if "reference" not in p.parts] + [ROOT / "README.md"]
YAMLS = sorted((ROOT / "src" / "forwardonly" / "configs").rglob("*.yaml")) + sorted(
    (ROOT / "src" / "forwardonly" / "tasks" / "builtin").glob("*.yaml"))
EXECUTED = (["configs", "list"], ["configs", "cp"], ["data", "list"], ["models", "list"])
RESOLVED = ("train", "eval", "demo")


def fenced_blocks(path: Path) -> list[tuple[str, str, bool]]:
    """``[(language, code, run_for_real), ...]`` of a Markdown file, in order."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        before = next((x.strip() for x in reversed(lines[:i]) if x.strip()), "")
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        out.append((m.group(1), "\n".join(lines[i + 1:j]), before == "<!-- test: run -->"))
        i = j + 1
    return out


def commands(text: str) -> list[list[str]]:
    """The ``forwardonly`` commands in shell text (continuations joined, comments and ``&&`` split)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            if part.strip().startswith("forwardonly "):
                out.append(shlex.split(part, comments=True)[1:])
    return out


def check(argv: list[str], cwd: Path) -> None:
    """Run, resolve or parse one command (see the module docstring)."""
    if argv[:2] in EXECUTED:
        assert main(argv) == 0, argv
    elif argv[0] in RESOLVED or argv[:2] == ["local", "train"]:
        for flag, value in itertools.pairwise(argv):
            if flag == "--run" and not (cwd / value / "config.json").is_file():  # a run made earlier
                from forwardonly.config import to_dict
                from forwardonly.lm.config import TrainConfig

                (cwd / value).mkdir(parents=True, exist_ok=True)
                (cwd / value / "config.json").write_text(json.dumps(to_dict(TrainConfig())))
        assert main([*argv, "--print-config"] if "--print-config" not in argv else argv) == 0, argv
    else:
        args = _parse(build_parser(), argv)
        assert callable(getattr(args, "func", None)), argv


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples(page, scratch, tiny_dir, capsys):
    namespace: dict = {"__name__": "__docs__"}
    blocks = fenced_blocks(page)
    for lang, code, run in blocks:
        if lang == "python":
            exec(compile(code, f"{page}:python", "exec"), namespace)  # noqa: S102 - the page's own example
        elif lang == "bash":
            for argv in commands(code):
                if run:
                    assert main([*argv, f"model.name={tiny_dir}", "threads=1", "--no-progress"]) == 0, argv
                else:
                    check(argv, scratch)
    assert blocks


def _help_examples() -> dict[str, list[list[str]]]:
    """``{prog: [argv, ...]}``: the example commands in each (sub)command's ``--help`` description."""
    found = {}

    def walk(p):
        for action in p._actions:
            for child in (getattr(action, "choices", None) or {}).values():
                if hasattr(child, "_actions"):
                    text = "\n".join(x.strip() for x in (child.description or "").splitlines())
                    found.setdefault(child.prog, []).extend(commands(text))
                    walk(child)

    walk(build_parser())
    return found


HELP = _help_examples()


def test_every_subcommand_help_has_examples():
    for name in ("train", "eval", "demo", "configs", "data", "local", "models", "report"):
        assert HELP.get(f"forwardonly {name}"), name


@pytest.mark.parametrize("prog", sorted(p for p in HELP if HELP[p]))
def test_help_examples(prog, scratch):
    for argv in HELP[prog]:  # in order: an example may use a file an earlier one wrote
        check(argv, scratch)


def _yaml_commands():
    out = []
    for path in YAMLS:
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                for m in re.finditer(r"forwardonly ([a-z]+)[^()]*", line):
                    if m.group(1) in SUBCOMMANDS:
                        out.append((path.name, shlex.split(m.group(0))[1:]))
    return out


YAML_COMMANDS = _yaml_commands()


def test_every_shipped_yaml_names_a_command():
    assert {name for name, _ in YAML_COMMANDS} == {p.name for p in YAMLS}


@pytest.mark.parametrize("name,argv", YAML_COMMANDS, ids=[f"{n}: {' '.join(a)}" for n, a in YAML_COMMANDS])
def test_yaml_comment_command(name, argv, scratch):
    check(argv, scratch)


def test_a_broken_example_is_caught(scratch):
    """The checks can fail: an unknown key, a missing config and an unknown flag are caught."""
    for argv in (["train", "optim.learning_rate=1"], ["train", "--config", "configs/nope.yaml"],
                 ["eval", "--no-such-flag"]):
        with pytest.raises((AssertionError, Exception)):
            check(argv, scratch)


# ----------------------------------------------------------------------------- docstring examples
# The API reference shows the docstrings' literal blocks (after "Example::"). They are fragments (a
# ``model`` or ``loss_fn`` from the surrounding text), so they are compiled, not run; commands among
# them are checked as above and YAML examples parsed. Blocks that are neither (a directory layout, a
# formula) are listed here by their first line.
NOT_CODE = {"checkpoint/", "w  ~  (q - z) * s",
            # update rules written as mathematics in the optimizers' docstrings
            "g_k   = (l_k - l_0) / eps", "g     = (l_+ - l_-) / (2 eps)",
            "c = (L(w + eps Z) - L(w - eps Z)) / (2 eps)", "N <- beta N + (1 - beta) c U,      W <- W - lr N V^T / r",
            "g = (L(w + eps z*m) - L(w - eps z*m)) / (2 eps),     w <- w - lr g z*m"}


def literal_blocks(doc: str) -> list[str]:
    import textwrap

    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        j = i + 1
        while lines[i].rstrip().endswith("::") and j < len(lines) and not lines[j].strip():
            j += 1
        base = len(lines[i]) - len(lines[i].lstrip())
        if not lines[i].rstrip().endswith("::") or j >= len(lines) or len(lines[j]) - len(lines[j].lstrip()) <= base:
            i += 1
            continue
        indent, k = len(lines[j]) - len(lines[j].lstrip()), j
        while k < len(lines) and (not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) >= indent):
            k += 1
        out.append(textwrap.dedent("\n".join(lines[j:k])).strip())
        i = k
    return out


def _docstrings(path: Path) -> list[tuple[str, str]]:
    import ast

    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))]
    return [(getattr(n, "name", "module"), ast.get_docstring(n)) for n in nodes if ast.get_docstring(n)]


MODULES = sorted((ROOT / "src" / "forwardonly").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT / "src")))
def test_docstring_examples(path, scratch):
    import yaml

    for where, doc in _docstrings(path):
        for block in literal_blocks(doc):
            if block.splitlines()[0] in NOT_CODE:
                continue
            cmds = commands(block)
            if cmds and all(x.strip().startswith(("forwardonly ", "#")) or not x.strip()
                            for x in block.replace("\\\n", " ").splitlines()):
                for argv in cmds:
                    check(argv, scratch)
                continue
            try:
                compile(block, f"{path}:{where}", "exec")
            except SyntaxError:
                assert isinstance(yaml.safe_load(block), dict), f"{path}:{where}: neither Python nor YAML:\n{block}"

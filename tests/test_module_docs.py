"""Every module's docstring tells the truth: its examples run and the commands it shows exist.

One test case per module and check, named by the module, so a failure reads as "which module, what is off":

- `test_doctests_run`: the module's doctests (module, class and function docstrings, as
  `doctest.DocTestFinder` finds them) run and print what they say, with ELLIPSIS and NORMALIZE_WHITESPACE.
- `test_shell_commands_exist`: every `dcs ...` line of the module docstring (optionally after `$ `) names
  real commands and options of the `dcs` app, and options that take a value get one (`--x VALUE` or
  `--x=VALUE`). Literal values are converted as the option would convert them (`--nproc two` fails);
  UPPER-CASE placeholders (FILE, DIR, N), `<...>`, `[...]` and `...` stand for anything.
- `test_no_untested_python_usage`: the module docstring holds no line of Python usage outside a doctest
  (a line that parses as Python and calls, assigns, imports, loops, opens a `with` block or raises;
  prose does not parse). Usage is written as a doctest, which the first check runs, or as prose.

Doctests here must stay fast and self-contained: tiny sizes, no servers, no training, no files outside a
temporary folder. The whole file runs in seconds.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import re
import shlex

import pytest
import typer

import dcs_cli


def _module_names() -> list[str]:
    names = [dcs_cli.__name__]
    # onerror: a package that fails to import still gets its test cases, which then show the error
    for info in pkgutil.walk_packages(dcs_cli.__path__, prefix=f"{dcs_cli.__name__}.", onerror=lambda _: None):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # importing one would run the program
            names.append(info.name)
    return sorted(names)


MODULES = _module_names()


def _module_doc(module) -> str:
    # Not cleandoc: a module docstring starts at column 0, so its indentation is the examples' own.
    return (module.__doc__ or "").expandtabs()


# ---------------------------------------------------------------------------------------------- doctests


@pytest.fixture
def plain_tables(monkeypatch):
    """Tables printed by doctests compare as plain text, also under `pytest -s` on a colour terminal."""
    from rich.console import Console

    import dcs_cli.console

    monkeypatch.setattr(dcs_cli.console, "out", Console(highlight=False, soft_wrap=True, width=160,
                                                         color_system=None))


@pytest.mark.parametrize("name", MODULES)
def test_doctests_run(name, plain_tables):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in finder.find(module, name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)


# ------------------------------------------------------------------------------------------ shell lines

_SHELL_LINE = re.compile(r"^(?:\$\s+)?dcs(?:\s|$)")
_SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "&"}
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(?:[.,:=/-][A-Z0-9_]*)*$|[<>{}*…]|\.\.\.")


def _is_shell_line(line: str) -> bool:
    """`$ dcs ...` anywhere, or `dcs ...` indented as an example (unindented it may be prose: "dcs itself")."""
    text = line.strip()
    return bool(_SHELL_LINE.match(text)) and (text.startswith("$") or line[:1].isspace())


def _outside_doctests(doc: str) -> list[str]:
    """The lines of `doc` that are neither doctest input (`>>>`, `...`) nor its expected output."""
    kept, in_example = [], False
    for line in doc.splitlines():
        text = line.strip()
        if not text:
            in_example = False
        elif text.startswith(">>>"):
            in_example = True
        if not in_example:
            kept.append(line)
    return kept


def _shell_lines(doc: str) -> list[str]:
    """The `dcs ...` command lines of a docstring outside its doctests, backslash continuations joined."""
    lines, pending = [], ""
    for raw in _outside_doctests(doc):
        text = raw.strip()
        if pending:
            text, pending = pending + " " + text, ""
        elif not _is_shell_line(raw):
            continue
        if text.endswith("\\"):
            pending = text[:-1].rstrip()
            continue
        lines.append(re.sub(r"^\$\s+", "", text))
    if pending:
        lines.append(pending)
    return lines


def _is_placeholder(token: str) -> bool:
    return bool(_PLACEHOLDER.search(token)) or (token.startswith("[") and token.endswith("]"))


def _subcontext(command, name: str, parent):
    return command.make_context(name, [], parent=parent, resilient_parsing=True)


def _check_command_line(line: str) -> str | None:
    """None if `line` is a valid `dcs` invocation, else what is wrong with it."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        return f"{line!r}: not a shell command ({exc})"
    for i, token in enumerate(tokens):
        if token in _SHELL_STOP:
            tokens = tokens[:i]
            break
    from dcs_cli.cli.app import app

    command = typer.main.get_command(app)
    ctx = _subcontext(command, "dcs", None)
    path = "dcs"
    positional = 0
    i = 1
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token in ("...", "…") or (token.startswith("[") and token.endswith("]")):
            continue
        params = {opt: p for p in command.get_params(ctx) for opt in (*p.opts, *p.secondary_opts)}
        if token.startswith("-") and token != "-":
            name, has_value, value = token.partition("=")
            param = params.get(name)
            if param is None:
                valid = ", ".join(sorted(o for o in params if o.startswith("--")))
                return f"{line!r}: `{path}` has no option {name} (valid: {valid})"
            takes_value = param.param_type_name == "option" and not (param.is_flag or param.count)
            if has_value and not takes_value:
                return f"{line!r}: {name} of `{path}` is a flag and takes no value"
            if takes_value and not has_value:
                if i >= len(tokens) or (tokens[i].startswith("-") and not _is_placeholder(tokens[i])):
                    return f"{line!r}: {name} of `{path}` needs a value"
                value = tokens[i]
                i += 1
            if takes_value and not _is_placeholder(value) and param.callback is None:
                try:
                    param.process_value(ctx, [value] if param.multiple else value)
                except Exception as exc:  # the app's own conversion error, whatever its class
                    return f"{line!r}: {name} {value!r} of `{path}`: {exc}"
            continue
        if hasattr(command, "list_commands"):  # a group: a bare word names a subcommand
            if _is_placeholder(token):  # `dcs bench <scenario>`: any of them
                return None
            try:
                sub = command.get_command(ctx, token)
            except Exception as exc:  # a lazily loaded command whose module is broken
                return f"{line!r}: `{path} {token}` does not load ({type(exc).__name__}: {exc})"
            if sub is None:
                return f"{line!r}: `{path}` has no command {token!r} (valid: {', '.join(command.list_commands(ctx))})"
            command, path = sub, f"{path} {token}"
            ctx = _subcontext(command, token, ctx)
            positional = 0
            continue
        arguments = [p for p in command.get_params(ctx) if p.param_type_name == "argument"]
        room = sum(float("inf") if p.nargs < 0 else p.nargs for p in arguments)
        positional += 1
        if positional > room:
            return f"{line!r}: `{path}` takes no argument {token!r}"
    if hasattr(command, "list_commands") and not getattr(command, "invoke_without_command", False):
        if not any(t in ("-h", "--help") for t in tokens):
            return f"{line!r}: `{path}` needs a command (one of {', '.join(command.list_commands(ctx))})"
    return None


@pytest.mark.parametrize("name", MODULES)
def test_shell_commands_exist(name):
    module = importlib.import_module(name)
    problems = [p for p in map(_check_command_line, _shell_lines(_module_doc(module))) if p]
    assert not problems, "\n".join(problems)


def test_the_shell_check_catches_what_it_should():
    assert _check_command_line("dcs convert --in-folder DIR -o OUT --val-ratio 0.1  # comment") is None
    assert _check_command_line("dcs verify --features F.npy --bin F.bin --folds 10 --json=out.json") is None
    assert _check_command_line("dcs -q train --config FILE --set a.b=1 --set c=2 ...") is None
    assert "no option --nope" in _check_command_line("dcs train --nope")
    assert "no command 'trian'" in _check_command_line("dcs trian --config x.yaml")
    assert "no command 'nope'" in _check_command_line("dcs bench nope")
    assert "needs a value" in _check_command_line("dcs train --config --overwrite")
    assert "flag" in _check_command_line("dcs train --overwrite=yes")
    assert "--nproc 'two'" in _check_command_line("dcs train --nproc two")
    assert "takes no argument" in _check_command_line("dcs verify extra.npy")
    assert "needs a command" in _check_command_line("dcs bench")
    assert _check_command_line("dcs bench <scenario> --json FILE") is None
    assert _shell_lines("Run\n\n    $ dcs train \\\n        --nproc 2\n\ndcs itself") == ["dcs train --nproc 2"]
    doctest_output = "    >>> verify_targets(targets)\n    dcs verify (10-fold)\n    ...\n"
    assert _shell_lines(doctest_output) == []


# ---------------------------------------------------------------------------------- untested Python usage

_CODE_NODES = (ast.Call, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Import, ast.ImportFrom, ast.With,
               ast.For, ast.Raise)


def _looks_like_python(text: str) -> bool:
    """Whether one line of a docstring parses as a Python statement that does something."""
    opened = text.count("(") - text.count(")") + text.count("[") - text.count("]")
    candidates = [text]
    if opened > 0:  # the first line of a call continued on the next
        candidates.append(text + ")" * opened)
    if text.rstrip().endswith(":") or re.search(r":\s*#", text):  # a `with ...:` / `for ...:` header
        candidates.append(text + "\n    pass")
    for source in candidates:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        if any(isinstance(node, _CODE_NODES) for node in ast.walk(tree)):
            return True
    return False


def _python_usage_lines(doc: str) -> list[str]:
    """Lines of Python usage in `doc` that are neither doctest input nor doctest output.

    Usage blocks are indented, but an unindented line that parses as a call or an assignment is just as
    much an example no test runs; prose does not parse as Python.
    """
    return [line for line in _outside_doctests(doc)
            if line.strip() and not _is_shell_line(line) and _looks_like_python(line.strip())]


@pytest.mark.parametrize("name", MODULES)
def test_no_untested_python_usage(name):
    module = importlib.import_module(name)
    lines = _python_usage_lines(_module_doc(module))
    assert not lines, "usage that no test runs; write it as a doctest (>>>) or as prose:\n" + "\n".join(lines)


def test_the_usage_check_tells_code_from_prose():
    doc = "\n".join([
        "Title.",
        "",
        "    store = LocalStore(10, 4)",
        '    with progress_bar("x", total=3) as advance:',
        '    info = write_rec("d", num=100,',
        "    drift = ||W_now - W_snap||_F / ||W_snap||_F",
        "    step_s      mean wall seconds per step (refreshes excluded)",
        "    demo_out/data/            train.rec, train.idx",
        "    dcs train --config FILE",
        "from the store (prose) = fine(",
        "Prose: `code(x)` inline, and a formula y = f (x) / 2 in a sentence.",
        "",
        "    >>> w = init_rows(10, 4)",
        "    >>> w.shape",
        "    Rows(n=10, d=4)",
    ])
    assert [line.strip() for line in _python_usage_lines(doc)] == [
        "store = LocalStore(10, 4)", 'with progress_bar("x", total=3) as advance:', 'info = write_rec("d", num=100,'
    ]

"""Which source files a stage executes, and a hash of them, so Snakemake re-runs a stage when
(and only when) its code changes.

A stage is a ``cmd_*`` function of ``cli.py`` (or a module run with ``python -m drdo.X``). Its
code is the source of that function and of the ``cli.py`` helpers it calls, the module-level
code of ``cli.py`` they read (constants such as ``TASK_SOURCES``), what every stage runs in
``cli.py`` (``main``, the argument parser with its defaults, any module-level statement other
than a definition), plus every module of the package it reaches by import, transitively, plus
the entry points (``__main__``, ``launch``). So editing ``losses.py`` changes the hash of
``train`` but not of ``generate``, editing ``cmd_generate`` changes only ``generate``, a parser
default changes every stage, and editing the README (or a comment or the docstring of cli.py
outside any function) changes nothing.

Standard library only: the Snakefile loads this file directly (it hashes the tree it sits in).
"""

from __future__ import annotations

import ast
import hashlib
import re
from functools import lru_cache
from pathlib import Path

PKG = Path(__file__).resolve().parent
ENTRY = ("__init__.py", "__main__.py", "launch.py")


def _resolve(module: Path, level: int, name: str | None) -> Path:
    """The package directory or module stem that ``from <level dots><name>`` in ``module`` names."""
    base = module.parent
    for _ in range(level - 1):
        base = base.parent
    return base.joinpath(*name.split(".")) if name else base


def _as_file(stem: Path) -> Path | None:
    for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
        if candidate.is_file() and PKG in candidate.parents:
            return candidate
    return None


@lru_cache(maxsize=None)
def _imports(module: Path) -> frozenset[Path]:
    """Package modules that ``module`` imports (relative imports, or absolute ``drdo.*``)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve(module, node.level, node.module)
            elif node.module and node.module.split(".")[0] == PKG.name:
                base = PKG.parent.joinpath(*node.module.split("."))
            else:
                continue
            for alias in node.names:  # `from . import io` names a module; `from .io import x` does not
                found.add(_as_file(base / alias.name) or _as_file(base))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PKG.name:
                    found.add(_as_file(PKG.parent.joinpath(*alias.name.split("."))))
    return frozenset(f for f in found if f is not None)


def _closure(modules: set[Path]) -> set[Path]:
    """``modules`` and what they import, transitively; cli.py counts function by function
    (``_cli_parts``), never as a whole, or every stage would depend on every module."""
    cli = PKG / "cli.py"
    todo, seen = list(modules), set()
    while todo:
        m = todo.pop()
        if m not in seen and m != cli:
            seen.add(m)
            todo.extend(_imports(m))
    return seen


ENTRY_FUNCTIONS = ("main",)  # cli.py code every stage runs: it parses the arguments and calls the stage


@lru_cache(maxsize=None)
def _cli() -> tuple[dict[int, str], dict[str, list[ast.stmt]], list[ast.stmt], dict[str, Path]]:
    """cli.py parsed once: the source of each top-level statement (by node id); the top-level
    definitions and assignments binding each name; the other statements (run on import, so by every
    stage; imports and the module docstring aside); the module file each name bound by a relative
    import comes from."""
    cli = PKG / "cli.py"
    source = cli.read_text()
    tree = ast.parse(source)
    lines = _source_lines(source)
    defs: dict[str, list[ast.stmt]] = {}
    always: list[ast.stmt] = []
    imported = {}  # name bound by an import in cli.py -> the module file it comes from
    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs.setdefault(node.name, []).append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        defs.setdefault(name.id, []).append(node)
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = _resolve(cli, node.level, node.module)
            for alias in node.names:
                f = _as_file(base / alias.name) or _as_file(base)
                if f:
                    imported[alias.asname or alias.name] = f
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            continue  # a third-party library: its version is recorded and checked, not hashed
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue  # imports for type annotations only: never run
        elif not (i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            always.append(node)
    segments = {id(n): _segment(lines, n) for n in tree.body}
    return segments, defs, always, imported


def _source_lines(source: str) -> list[str]:
    """Lines with their ends, split where ``ast.get_source_segment`` splits (at \\r\\n, \\r, \\n only)."""
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z", source)


def _segment(lines: list[str], node: ast.AST) -> str:
    """``ast.get_source_segment(source, node)`` from the source's lines: that function splits the
    whole source anew, in Python, on every call (seconds per Snakemake start with a study's
    module instances). Offsets are in UTF-8 bytes, as the AST's are."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return lines[first].encode()[node.col_offset:node.end_col_offset].decode()
    head = lines[first].encode()[node.col_offset:].decode()
    tail = lines[last].encode()[:node.end_col_offset].decode()
    return "".join([head, *lines[first + 1:last], tail])


@lru_cache(maxsize=None)
def _cli_parts(command: str) -> tuple[tuple[str, ...], frozenset[Path]]:
    """Sources of ``command``, of the cli.py functions and module-level values it reads, and of
    what every stage runs in cli.py; the modules their names refer to. Another stage's ``cmd_*``
    is only named (by the parser), never run: not followed."""
    cli = PKG / "cli.py"
    segments, defs, always, imported = _cli()
    if not any(isinstance(n, ast.FunctionDef) for n in defs.get(command, [])):
        raise KeyError(f"cli.py has no function {command!r}")
    sources, modules, done = [], set(), set()
    todo = [*always, *(n for name in (command, *ENTRY_FUNCTIONS) for n in defs.get(name, []))]
    while todo:
        node = todo.pop()
        if id(node) in done:
            continue
        done.add(id(node))
        sources.append(segments[id(node)])
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.level:  # a lazy import inside the function
                base = _resolve(cli, sub.level, sub.module)
                modules.update(f for alias in sub.names if (f := _as_file(base / alias.name) or _as_file(base)))
        names = _free_names(node) if isinstance(node, ast.FunctionDef) else _read_names(node)
        for name_id in names:
            if name_id in defs and not (name_id.startswith("cmd_") and name_id != command):
                todo.extend(defs[name_id])
            elif name_id in imported:
                modules.add(imported[name_id])
    return tuple(sorted(sources)), frozenset(modules)


def _read_names(node: ast.AST) -> set[str]:
    """Names a module-level statement (an assignment, a class, an ``if`` block) reads."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _free_names(fn: ast.FunctionDef) -> set[str]:
    """Names ``fn`` reads that it does not bind itself (a local ``train = ...`` or an argument
    named like an import is not the imported ``train``). Bindings are those of ``fn``'s own
    scope; a nested function reading one of them reads the enclosing local, as in Python."""
    bound = {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)}
    bound |= {a.arg for a in (fn.args.vararg, fn.args.kwarg) if a}
    todo = list(fn.body)
    while todo:  # fn's own scope: not into nested functions, lambdas, classes or comprehensions
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            continue
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        todo.extend(ast.iter_child_nodes(node))
    return {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound


def stage_files(stage: str) -> list[Path]:
    """Package files a stage executes: ``cmd_<stage>`` of cli.py, or a module such as ``synthetic``."""
    if (PKG / "cli.py").is_file() and stage.startswith("cmd_"):
        modules = _cli_parts(stage)[1]
    else:
        modules = {PKG / f"{stage}.py"}
    entry = {PKG / e for e in ENTRY if (PKG / e).is_file()}  # run every stage; hashed, not followed
    return sorted(_closure(modules) | entry)


@lru_cache(maxsize=None)
def stage_hash(stage: str) -> str:
    h = hashlib.sha256()
    if stage.startswith("cmd_"):
        for src in _cli_parts(stage)[0]:
            h.update(src.encode())
    for f in stage_files(stage):
        h.update(str(f.relative_to(PKG)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]

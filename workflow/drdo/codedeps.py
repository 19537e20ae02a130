"""Which source files a stage executes, and a hash of them, so Snakemake re-runs a stage when
(and only when) its code changes.

A stage is a ``cmd_*`` function of ``cli.py`` (or a module run with ``python -m drdo.X``). Its
code is the source of that function and of the ``cli.py`` helpers it calls, plus every module
of the package it reaches by import, transitively, plus the entry points (``__main__``,
``launch``). So editing ``losses.py`` changes the hash of ``train`` but not of ``generate``,
editing ``cmd_generate`` changes only ``generate``, and editing the README changes nothing.

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


@lru_cache(maxsize=None)
def _cli() -> tuple[dict[str, str], dict[str, ast.FunctionDef], dict[str, Path]]:
    """cli.py parsed once: each top-level function's source and node, and the module file each
    name bound by a relative import comes from."""
    cli = PKG / "cli.py"
    source = cli.read_text()
    tree = ast.parse(source)
    lines = _source_lines(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    imported = {}  # name bound by an import in cli.py -> the module file it comes from
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = _resolve(cli, node.level, node.module)
            for alias in node.names:
                f = _as_file(base / alias.name) or _as_file(base)
                if f:
                    imported[alias.asname or alias.name] = f
    return {name: _segment(lines, fn) for name, fn in functions.items()}, functions, imported


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
    """Sources of ``command`` and the cli.py functions it calls; the modules their names refer to."""
    cli = PKG / "cli.py"
    segments, functions, imported = _cli()
    if command not in functions:
        raise KeyError(f"cli.py has no function {command!r}")
    sources, modules, todo, seen = [], set(), [command], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        sources.append(segments[name])
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.ImportFrom) and node.level:  # a lazy import inside the function
                base = _resolve(cli, node.level, node.module)
                modules.update(f for alias in node.names if (f := _as_file(base / alias.name) or _as_file(base)))
        for name_id in _free_names(functions[name]):
            if name_id in functions:
                todo.append(name_id)
            elif name_id in imported:
                modules.add(imported[name_id])
    return tuple(sorted(sources)), frozenset(modules)


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

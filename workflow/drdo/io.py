"""Atomic file output and provenance records.

Every artifact says how it was made: the config values it depends on (and their hash), the
hashes of its inputs, package versions and the git commit. Tables carry this as Parquet
key-value metadata under ``drdo.provenance``; directories (checkpoints) as
``manifest.json``. Writers go through a temporary name and ``os.replace`` so that a killed
job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"drdo.provenance"
MANIFEST = "manifest.json"
_PACKAGES = ("drdo-workflow", "torch", "transformers", "tokenizers", "pyarrow", "rapidfuzz", "snakemake")
# Libraries whose version changes numbers (kernels, model code, mixed precision, sharding): artifacts
# combined into one table or one training run must agree on them (check_versions). Recorded as null
# where not installed, so "absent" is a version too; a record without the key (older artifacts) is
# not compared.
CHECKED_PACKAGES = ("torch", "transformers", "accelerate", "deepspeed")


def config_hash(cfg: Any) -> str:
    """Stable short hash of a JSON-serialisable config subset."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str | None]:
    versions = {}
    for name in _PACKAGES + CHECKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in CHECKED_PACKAGES:
                versions[name] = None
    return versions


LINEAGE: str | None = None  # set by the CLI (--lineage): the workflow's hash of everything upstream
# set by check_versions when the inputs were made with different library versions (and allowed)
VERSION_MISMATCH: dict | None = None


def provenance(stage: str, cfg: Any, inputs: dict[str, str | os.PathLike] | None = None) -> dict:
    """The record stored with every artifact of ``stage``."""
    return {
        "stage": stage,
        "lineage": LINEAGE,
        "config": cfg,
        "config_hash": config_hash(cfg),
        "inputs": {k: {"path": str(v), "sha256": file_hash(v)} for k, v in (inputs or {}).items()},
        "versions": _versions(),
        "git_commit": _git_commit(),
        **({"version_mismatch": VERSION_MISMATCH} if VERSION_MISMATCH else {}),
    }


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``path`` only if the block succeeds.

    Works for files and directories alike. A process killed midway leaves only a hidden sibling
    folder ``.<name>.<random>``, which no stage reads and the next write of ``path`` removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stray in path.parent.glob(f".{path.name}.*"):  # what a write of this path killed before left
        if re.fullmatch(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}", stray.name) and stray.is_dir():
            shutil.rmtree(stray, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir():  # moved aside whole first: a kill never leaves a half-deleted folder at ``path``
            os.replace(path, tmp.parent / ".replaced")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, prov: dict, compression: str = "snappy") -> None:
    if df.attrs:  # e.g. an input's provenance (read_parquet): pyarrow would store it as this file's
        df = df.copy(deep=False)
        df.attrs = {}
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(prov, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)


def provenance_sidecar(path: str | os.PathLike) -> Path:
    """Where a CSV's provenance lives: ``x.csv`` -> ``x.provenance.json``."""
    return Path(path).with_suffix(".provenance.json")


def write_csv(df: pd.DataFrame, path: str | os.PathLike, prov: dict) -> None:
    """A CSV for people, its provenance in a JSON sidecar (CSV has no metadata slot).

    Two files cannot be replaced at once: the old sidecar goes once the new CSV is written and just
    before it is moved in, the new sidecar comes last. A kill in between leaves a CSV without
    provenance (read_provenance fails), never a CSV beside another run's provenance.
    """
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
        provenance_sidecar(path).unlink(missing_ok=True)
    write_json(prov, provenance_sidecar(path))


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """The table, its provenance (if it has one) in ``DataFrame.attrs["provenance"]``.

    pandas keeps ``attrs`` through row and column selections, and through ``concat`` only when
    every frame has the same; ``merge`` drops them. The stages read provenance with read_provenance.
    """
    table = pq.read_table(path)
    df = table.to_pandas()
    raw = (table.schema.metadata or {}).get(PROVENANCE_KEY)
    df.attrs = {"provenance": json.loads(raw)} if raw else {}
    return df


def read_provenance(path: str | os.PathLike) -> dict:
    """Provenance of a Parquet file, a CSV (sidecar) or a directory with a manifest."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / MANIFEST).read_text())
    if path.suffix == ".csv":
        return json.loads(provenance_sidecar(path).read_text())
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[PROVENANCE_KEY])


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(rows: list[dict], path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict | None, str]]:
    """Yield (line number, parsed row or None if not valid JSON, raw line) for each non-blank line."""
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            yield lineno, row, line


def check_lineage(expected: dict[str, str], version_mismatch: str = "error") -> None:
    """Refuse to combine inputs whose recorded lineage is not the one the current config and
    code give (e.g. a file left over from before a config change whose upstream job failed), or
    (``version_mismatch: error``) that were made with different library versions."""
    for path, want in expected.items():
        got = read_provenance(path).get("lineage")
        if got != want:
            raise ValueError(f"{path} was made under lineage {got}, but the current config and code give {want}: "
                             "it is stale (made before a change upstream). Delete it and re-run snakemake.")
    check_versions(list(expected), version_mismatch)


def check_versions(paths: list[str | os.PathLike], version_mismatch: str = "error", this_job: bool = False) -> dict:
    """The CHECKED_PACKAGES versions the artifacts at ``paths`` (and, with ``this_job``, this process)
    were made with. Where they differ: an error naming them (``version_mismatch: error``, the config
    key), or a warning and a ``version_mismatch`` entry in this job's provenance (``warn``).
    Returns {package: {version: [who]}} for the packages that differ."""
    global VERSION_MISMATCH
    seen: dict[str, dict[str, list[str]]] = {name: {} for name in CHECKED_PACKAGES}
    records = [(str(p), _recorded_versions(p)) for p in paths]
    if this_job:
        records.append(("this job", _versions()))
    for who, versions in records:
        for name in CHECKED_PACKAGES:
            if name in versions:  # not recorded (an older artifact): not compared
                seen[name].setdefault(str(versions[name]), []).append(who)
    mismatch = {name: by_version for name, by_version in seen.items() if len(by_version) > 1}
    if not mismatch:
        return {}
    what = "; ".join(f"{name} " + ", ".join(f"{v} ({', '.join(who)})" for v, who in by_version.items())
                     for name, by_version in mismatch.items())
    message = f"inputs made with different library versions: {what}"
    if version_mismatch == "error":
        raise ValueError(f"{message}. Rebuild the older artifacts with the current environment, or set config "
                         "key version_mismatch: warn to combine them anyway (recorded in the provenance).")
    logging.getLogger("drdo").warning("%s (config key version_mismatch: warn; recorded in the provenance)", message)
    VERSION_MISMATCH = {**(VERSION_MISMATCH or {}), **mismatch}
    return mismatch


def _recorded_versions(path: str | os.PathLike) -> dict:
    """The versions an artifact records; none for a file made outside the workflow (no provenance)."""
    try:
        return read_provenance(path).get("versions", {})
    except (FileNotFoundError, KeyError):
        return {}

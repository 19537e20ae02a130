"""``drdo show PATH``: what an artifact holds and how it was made.

A Parquet table: its columns and types, row count, first rows and provenance. A CSV: the same,
its provenance from the ``.provenance.json`` sidecar. A model directory (a checkpoint with
``manifest.json``): its manifest, validation metrics and a summary of ``metrics.parquet`` (steps,
first and last loss terms). ``--json`` prints the same as one JSON object with fixed keys:
``kind`` (parquet | csv | model), ``path`` and, for tables, ``rows``, ``columns`` ([{name, type}]),
``head`` (records) and ``provenance`` (null when there is none); for a model, ``manifest``,
``validation`` and ``training`` ({steps, columns, first, last}, or null without metrics).

Reads only metadata and the first rows; never imports torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml

from . import io

PROVENANCE_ORDER = ("stage", "lineage", "git_commit", "config_hash", "config", "inputs", "versions")


class NotAnArtifact(ValueError):
    """The path is none of the things ``drdo show`` reads."""


def describe(path: str | Path, rows: int = 5) -> dict:
    """The machine-readable description (``--json``)."""
    path = Path(path)
    if path.is_dir():
        if not (path / io.MANIFEST).is_file():
            raise NotAnArtifact(f"{path} is a directory without {io.MANIFEST}: not a model checkpoint of the "
                                "workflow (show a Parquet or CSV file, or a model directory)")
        return _model(path)
    if not path.exists():
        raise NotAnArtifact(f"{path} does not exist")
    if path.suffix == ".parquet":
        return _parquet(path, rows)
    if path.suffix == ".csv":
        return _csv(path, rows)
    raise NotAnArtifact(f"{path} is not a Parquet file (.parquet), a CSV file (.csv) or a model directory "
                        f"(a folder with {io.MANIFEST})")


def _records(df: pd.DataFrame) -> list[dict]:
    """JSON-safe rows (NaN -> null, timestamps as ISO text)."""
    return json.loads(df.to_json(orient="records", date_format="iso", default_handler=str))


def _parquet(path: Path, rows: int) -> dict:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise NotAnArtifact(f"{path} is not a readable Parquet file: {e}") from None
    head = next(pf.iter_batches(batch_size=rows), None) if rows > 0 else None
    head = head.to_pandas() if head is not None else pf.schema_arrow.empty_table().to_pandas()
    raw = (pf.schema_arrow.metadata or {}).get(io.PROVENANCE_KEY)
    return {"kind": "parquet", "path": str(path), "rows": pf.metadata.num_rows,
            "columns": [{"name": f.name, "type": str(f.type)} for f in pf.schema_arrow],
            "head": _records(head.head(rows)), "provenance": json.loads(raw) if raw else None}


def _csv(path: Path, rows: int) -> dict:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise NotAnArtifact(f"{path} is not a readable CSV file: {e}") from None
    sidecar = io.provenance_sidecar(path)
    return {"kind": "csv", "path": str(path), "rows": len(df),
            "columns": [{"name": str(c), "type": str(t)} for c, t in df.dtypes.items()],
            "head": _records(df.head(rows)),
            "provenance": json.loads(sidecar.read_text()) if sidecar.is_file() else None}


def _model(path: Path) -> dict:
    manifest = json.loads((path / io.MANIFEST).read_text())
    training = None
    metrics = path / "metrics.parquet"
    if metrics.is_file():
        m = pd.read_parquet(metrics)
        terms = [c for c in m.columns if c != "step"]
        training = {"steps": len(m), "columns": terms,
                    "first": _records(m.head(1)[terms])[0] if len(m) else None,
                    "last": _records(m.tail(1)[terms])[0] if len(m) else None}
    return {"kind": "model", "path": str(path), "manifest": manifest,
            "validation": manifest.get("validation") or None, "training": training}


# --------------------------------------------------------------------------- text for people
def _number(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _block(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, width=100).rstrip()


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.splitlines())


def _provenance(prov: dict | None, missing: str) -> list[str]:
    if prov is None:
        return [f"provenance: none ({missing})"]
    lines = ["provenance:"]
    for key in [k for k in PROVENANCE_ORDER if k in prov] + sorted(k for k in prov if k not in PROVENANCE_ORDER):
        value = prov[key]
        if key == "inputs" and isinstance(value, dict) and value:
            lines.append("  inputs:")
            lines += [f"    {name}: {v.get('path')} (sha256 {v.get('sha256')})" if isinstance(v, dict)
                      else f"    {name}: {v}" for name, v in sorted(value.items())]
        elif isinstance(value, (dict, list)):
            lines += [f"  {key}:", _indent(_block(value), "    ")] if value else [f"  {key}: (none)"]
        else:
            lines.append(f"  {key}: {value}")
    return lines


def render(info: dict) -> str:
    """``describe()``'s result as text."""
    if info["kind"] == "model":
        return _render_model(info)
    lines = [f"{info['path']}: {info['kind']} table, {info['rows']:,} rows, {len(info['columns'])} columns",
             "columns:"]
    width = max((len(c["name"]) for c in info["columns"]), default=0)
    lines += [f"  {c['name']:<{width}}  {c['type']}" for c in info["columns"]]
    if info["head"]:
        head = pd.DataFrame(info["head"], columns=[c["name"] for c in info["columns"]])
        lines += [f"first {len(head)} rows:", _indent(head.to_string(index=False, max_colwidth=40, line_width=120))]
    missing = "no .provenance.json beside it" if info["kind"] == "csv" else "no drdo.provenance metadata"
    return "\n".join(lines + _provenance(info["provenance"], missing))


def _render_model(info: dict) -> str:
    manifest = info["manifest"]
    lines = [f"{info['path']}: model checkpoint ({manifest.get('stage', 'unknown stage')})"]
    if manifest.get("train_examples") is not None:
        lines.append(f"train_examples: {manifest['train_examples']:,}")
    if info["validation"]:
        lines.append("validation: " + " ".join(f"{k}={_number(v)}" for k, v in info["validation"].items()))
    training = info["training"]
    if training:
        lines.append(f"training: {training['steps']:,} steps (metrics.parquet)")
        for when in ("first", "last"):
            if training[when]:
                lines.append(f"  {when}: " + " ".join(f"{k}={_number(v)}" for k, v in training[when].items()))
    rest = {k: v for k, v in manifest.items() if k not in ("validation", "train_examples")}
    return "\n".join(lines + _provenance(rest, f"no {io.MANIFEST}"))


def main(path: str, rows: int = 5, as_json: bool = False) -> str:
    info = describe(path, rows)
    return json.dumps(info, indent=2, sort_keys=True, default=str) if as_json else render(info)

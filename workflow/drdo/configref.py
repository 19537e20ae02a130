"""The configuration reference (docs/configuration.md), generated from the schemas.

    python -m drdo.configref > docs/configuration.md

Every key of ``workflow/schemas/config.schema.yaml`` and ``workflow/schemas/study.schema.yaml``
becomes a table row: its dotted name, its type and range (read from the schema), its value in the
embedded default ``config/config.yaml`` and its ``description``. The output depends on those three
files alone (their order, no clock, no paths of this machine), so the committed page can be
compared with a fresh one (``tests/test_configref.py``). No torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG_SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
STUDY_SCHEMA = REPO / "workflow" / "schemas" / "study.schema.yaml"
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
COMMAND = "python -m drdo.configref > docs/configuration.md"

# $defs that are objects with keys of their own: their keys are listed once, in a table of their own
# inside the section that uses them (the training keys: as the `train` section's own table), and
# every key that takes them links there. Name -> (title, prefix of the rows).
SHARED = {
    "train_common": ("Training keys", "train"),
    "job_resources": ("Keys of each entry", "resources.<rule>"),
    "hub_dataset": ("Keys of each entry", "data.hub.<name>"),
}
# Sections that take the training keys, in the order they override one another.
TRAINING_SECTIONS = ["train", "sft", "oracle", "ensemble", "align.common", "align.drdo", "align.dpo", "align.edpo"]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _def_name(node: dict) -> str | None:
    ref = node.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref.startswith("#/$defs/") else None


def _resolve(node: dict, defs: dict) -> dict:
    """``node`` with its ``$ref`` and ``allOf`` parts merged in (the node's own words win)."""
    out: dict = {}
    name = _def_name(node)
    if name:
        out.update(_resolve(defs[name], defs))
    for part in node.get("allOf", []):
        part = _resolve(part, defs)
        props = {**out.get("properties", {}), **part.get("properties", {})}
        out.update({k: v for k, v in part.items() if k not in ("properties", "description")})
        if props:
            out["properties"] = props
    for key, value in node.items():
        if key in ("$ref", "allOf"):
            continue
        if key == "properties":
            value = {**out.get("properties", {}), **value}
        out[key] = value
    return out


def _shared_of(node: dict) -> str | None:
    """The shared $def a key takes its keys from (directly or through allOf), if any."""
    for part in [node, *node.get("allOf", [])]:
        name = _def_name(part)
        if name in SHARED:
            return name
    return None


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _type(node: dict, defs: dict) -> str:
    """A short human reading of a (sub)schema's type and allowed values."""
    node = _resolve(node, defs)
    if "oneOf" in node:
        return " or ".join(_type(option, defs) for option in node["oneOf"])
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    types = node.get("type", "any")
    types = types if isinstance(types, list) else [types]
    words = []
    for t in types:
        if t == "array":
            words.append(_array(node, defs))
        elif t == "object":
            words.append("mapping" if "properties" not in node else "section")
        elif t == "null":
            words.append("null")
        else:
            words.append(t + _range(node))
    return " or ".join(words)


def _range(node: dict) -> str:
    low = ("≥", node["minimum"]) if "minimum" in node else (">", node["exclusiveMinimum"]) \
        if "exclusiveMinimum" in node else None
    high = ("≤", node["maximum"]) if "maximum" in node else ("<", node["exclusiveMaximum"]) \
        if "exclusiveMaximum" in node else None
    parts = [f"{bound[0]} {_number(bound[1])}" for bound in (low, high) if bound]
    if node.get("minLength", 0) > 0:
        parts.append("not empty")
    if "pattern" in node:
        parts.append(f"matching `{node['pattern']}`")
    return " " + ", ".join(parts) if parts else ""


def _array(node: dict, defs: dict) -> str:
    lo, hi = node.get("minItems"), node.get("maxItems")
    text = f"list of ({_type(node.get('items', {}), defs)})"
    if lo is not None and lo == hi:
        text += f", exactly {lo}"
    elif lo:
        text += f", at least {lo}"
    return text + (", no repeats" if node.get("uniqueItems") else "")


def _value(config: dict | None, path: str):
    node = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()
END_OF_DOCUMENT = "\n..."  # how PyYAML ends a document that is one scalar


def _show(value) -> str:
    if value is _MISSING:
        return ""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return f"`{text.removesuffix(END_OF_DOCUMENT).strip()}`"


def _cell(text) -> str:
    """One table cell: one line, pipes escaped, and outside code spans `<` escaped (GitHub would
    take `<out_dir>` for an HTML tag and drop it)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.replace("`", "").strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


class Reference:
    """Rows of one schema: (dotted key, type, default, description), in the schema's order."""

    def __init__(self, schema: dict, config: dict | None):
        self.defs = schema.get("$defs", {})
        self.config = config
        self.missing: list[str] = []
        self.used: list[str] = []  # shared $defs met so far, in order

    def described(self, path: str, node: dict) -> str:
        """The key's own description (a shared section's words do not describe the key using it)."""
        text = node.get("description")
        if not text:
            self.missing.append(path)
        return text or ""

    def rows(self, props: dict, prefix: str, required=()):
        for name, node in props.items():
            path = f"{prefix}{name}"
            yield self.row(path, node, name in required)
            yield from self.children(path, node)

    def row(self, path: str, node: dict, required: bool):
        resolved = _resolve(node, self.defs)
        description = self.described(path, node)
        shared = _shared_of(node)
        value = _MISSING if self.config is None else _value(self.config, path)
        if shared:
            if shared not in self.used:
                self.used.append(shared)
            kind = f"section, [its keys](#{anchor(self.heading(shared))})"
            if node.get("properties"):  # its own keys follow as rows
                value = _MISSING
        elif "properties" in resolved:
            kind, value = "section", _MISSING
        elif self._object_option(resolved):
            kind = " or ".join("section" if "properties" in _resolve(o, self.defs) else _type(o, self.defs)
                               for o in resolved["oneOf"])
        else:
            kind = _type(node, self.defs)
        if required:
            kind += " (required)"
        if self.config is None and "default" in node:
            value = node["default"]
        return path, kind, _show(value), description

    def heading(self, shared: str) -> str:
        title, prefix = SHARED[shared]
        return "train" if shared == "train_common" else f"{title} (`{prefix}`)"

    def _object_option(self, node: dict):
        for option in node.get("oneOf", []):
            option = _resolve(option, self.defs)
            if "properties" in option:
                return option
        return None

    def children(self, path: str, node: dict):
        if _shared_of(node):  # the shared keys have their own table; only the section's own keys here
            yield from self.rows(node.get("properties", {}), path + ".", node.get("required", ()))
            return
        resolved = _resolve(node, self.defs)
        target = resolved if "properties" in resolved else self._object_option(resolved)
        if target is not None:
            yield from self.rows(target["properties"], path + ".", target.get("required", ()))
        extra = resolved.get("additionalProperties")
        if isinstance(extra, dict):
            extra = _resolve(extra, self.defs)
            if "properties" in extra:
                yield from self.rows(extra["properties"], path + ".<name>.", extra.get("required", ()))

    def shared_rows(self, name: str, defaults_from: str | None = None):
        node = _resolve(self.defs[name], self.defs)
        prefix = SHARED[name][1]
        for key, sub in node["properties"].items():
            path, kind, _, description = self.row(f"{prefix}.{key}", sub, False)
            value = _value(self.config, f"{defaults_from}.{key}") if defaults_from else _MISSING
            yield path, kind, _show(value), description


def _table(rows, with_default=True) -> list[str]:
    head = "| key | type | default | description |" if with_default else "| key | type | description |"
    lines = [head, "|---|---|---|---|" if with_default else "|---|---|---|"]
    for path, kind, default, text in rows:
        cells = [f"`{path}`", _cell(kind)] + ([_cell(default)] if with_default else []) + [_cell(text)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _overrides(config: dict, training_keys: list[str]) -> list[str]:
    lines = []
    for section in TRAINING_SECTIONS[1:]:
        node = _value(config, section)
        if not isinstance(node, dict):
            continue
        set_here = [f"`{k}: {_show(v)[1:-1]}`" for k, v in node.items() if k in training_keys]
        lines.append(f"- `{section}`: " + (", ".join(set_here) if set_here else "none"))
    return lines


def _is_section(node: dict, defs: dict) -> bool:
    return "properties" in _resolve(node, defs) or bool(_shared_of(node))


def config_reference(schema: dict, config: dict) -> tuple[list[str], list[str]]:
    ref = Reference(schema, config)
    props = schema["properties"]
    required = schema.get("required", ())
    scalars = {k: v for k, v in props.items() if not _is_section(v, ref.defs)}
    out = ["## General", ""] + _table(ref.rows(scalars, "", required)) + [""]
    for name, node in props.items():
        if name in scalars:
            continue
        out += [f"## {name}", "", _cell(ref.described(name, node)), ""]
        ref.used = []
        if _shared_of(node) == "train_common":
            if name == "train":
                training = _resolve(ref.defs["train_common"], ref.defs)
                out += _table(ref.shared_rows("train_common", "train")) + [""]
                out += [_cell(training.get("description", "")), "", "Set in the embedded default:", ""]
                out += _overrides(config, list(training["properties"])) + [""]
            else:
                out += [f"Takes every one of the [training keys](#train) (each overrides `train`'s value)"
                        + (", and these:" if node.get("properties") else "."), ""]
        rows = list(ref.children(name, node))
        if rows:
            out += _table(rows) + [""]
        for shared in ref.used:
            if shared != "train_common":
                out += [f"### {ref.heading(shared)}", "", _cell(ref.described(shared, ref.defs[shared])), ""]
                out += _table(ref.shared_rows(shared), with_default=False) + [""]
    return out, ref.missing


def study_reference(schema: dict) -> tuple[list[str], list[str]]:
    ref = Reference(schema, None)
    out = ["## Study files", "", _cell(ref.described("(the study schema)", schema)), ""]
    out += _table(ref.rows(schema["properties"], "", schema.get("required", ())), with_default=False) + [""]
    return out, ref.missing


def render() -> tuple[str, list[str]]:
    """The page, and the schema keys that have no description (each as its dotted path)."""
    config_schema, study_schema = _load(CONFIG_SCHEMA), _load(STUDY_SCHEMA)
    config_part, missing = config_reference(config_schema, _load(DEFAULT_CONFIG))
    study_part, study_missing = study_reference(study_schema)
    sections = [k for k, v in config_schema["properties"].items() if _is_section(v, config_schema.get("$defs", {}))]
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `" + COMMAND + "` from workflow/schemas/config.schema.yaml,",
        "     workflow/schemas/study.schema.yaml and config/config.yaml. Do not edit by hand. -->",
        "",
        "Every key the workflow reads, from `workflow/schemas/config.schema.yaml`. Every run checks its",
        "config against that schema before any job starts; a wrong key or value stops the run with the key",
        "named. *Default* is the value in the embedded default, `config/config.yaml` (blank: not set there).",
        "A config of your own needs only the keys it changes and its own `out_dir`:",
        "",
        "```bash",
        "snakemake --cores all --configfile my.yaml -- results/my-run/winrates.csv",
        "```",
        "",
        "Study files (`config/studies/`) are described in the [last section](#study-files).",
        "",
        "Sections: [general](#general), " + ", ".join(f"[{k}](#{k})" for k in sections) + ".",
        "",
    ]
    text = "\n".join(lines + config_part + study_part).rstrip() + "\n"
    return text, missing + [f"study schema: {m}" for m in study_missing]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", help="write here instead of standard output")
    args = parser.parse_args(argv)
    text, missing = render()
    if missing:
        print("schema keys without a description: " + ", ".join(missing), file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

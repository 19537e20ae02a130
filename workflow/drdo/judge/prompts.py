"""Judge prompt templates and verdict parsing.

Templates are plain text files with ``{field}`` placeholders (see ``FIELDS``); substitution is a
single pass, so a response that happens to contain ``{response_b}`` is never expanded. The
verdict is the *last* ``Preferred: A|B`` line (the DPO paper's GPT-4 format, App. C.2), or the
``preferred`` field of a JSON object when the server constrained the output to
``VERDICT_SCHEMA``. Anything else is no verdict: none is ever guessed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

FIELDS = ("document", "prompt", "reference", "response_a", "response_b", "document_kind", "Document_kind")
REQUIRED = ("response_a", "response_b")
DOCUMENT_KIND = {"tldr": "forum post", "news": "news article"}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
# "Preferred: A", "**Preferred:** "B"", "preferred: A." -- the letter itself must be upper case.
_PREFERRED = re.compile(r"^[\W_]*(?i:preferred)[\W_]*?:[\s*_\"'`“”]*([AB])(?![\w])", re.MULTILINE)

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"comparison": {"type": "string"}, "preferred": {"type": "string", "enum": ["A", "B"]}},
    "required": ["comparison", "preferred"],
    "additionalProperties": False,
}


def response_format(kind: str) -> dict | None:
    """The ``response_format`` request field for ``judge.response_format``."""
    if kind == "text":
        return None
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA}}
    raise ValueError(f"judge.response_format must be 'text' or 'json_schema', not {kind!r}")


def load_template(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge prompt template {path} does not exist (config key judge.prompts)")
    text = path.read_text()
    names = set(_PLACEHOLDER.findall(text))
    unknown = sorted(names - set(FIELDS))
    if unknown:
        raise ValueError(f"judge prompt template {path}: unknown placeholder(s) {unknown}; known: {list(FIELDS)}")
    missing = [f for f in REQUIRED if f not in names]
    if missing:
        raise ValueError(f"judge prompt template {path}: missing placeholder(s) {missing}")
    return text


def render(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def document_kind(eval_set: str) -> str:
    return DOCUMENT_KIND.get(eval_set, "document")


def parse_verdict(text: str | None) -> str | None:
    """"A", "B", or None when the text holds no usable verdict."""
    if not text:
        return None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and obj.get("preferred") in ("A", "B"):
            return obj["preferred"]
    found = _PREFERRED.findall(text)
    return found[-1] if found else None

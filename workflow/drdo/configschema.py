"""JSON Schema checks of a config or a study file, before any job runs.

The same check as ``snakemake.utils.validate`` (Draft 2020-12, the schema's ``default`` values
filled in, a ``WorkflowError``), with a one-line message naming the key (an unknown key with the
nearest valid one) instead of the whole config and schema; and each schema is read once per loaded
copy of this module (the Snakefiles load it once per workflow parse, ``workflow/rules/code.smk``).
Snakemake's own function re-reads the schema through YTE's pure-Python YAML templating on every
call, once for each of a study's 125 module instances: about a third of the study's dry run.
Our schemas use no YTE templates, so PyYAML's C parser reads them to the same objects
(``tests/test_configschema.py``).

No torch: the Snakefiles load this file directly.
"""

from __future__ import annotations

import copy
import difflib
from functools import lru_cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match
from snakemake.exceptions import WorkflowError

SAFE_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def schema(path: str) -> dict:
    """The parsed schema file (cached: treat as read-only)."""
    return _parsed(str(Path(path).resolve()))


@lru_cache(maxsize=None)
def _parsed(path: str) -> dict:
    return yaml.load(Path(path).read_text(), Loader=SAFE_YAML)


def _fill_defaults(properties_check):
    """Draft 2020-12's ``properties`` check that first sets each missing property's ``default``
    (a copy, so configs never share a mutable default through the cached schema)."""

    def check(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if isinstance(prop, dict) and "default" in prop:
                    instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from properties_check(validator, properties, instance, subschema)

    return check


_Validator = validators.extend(Draft202012Validator,
                               {"properties": _fill_defaults(Draft202012Validator.VALIDATORS["properties"])})


@lru_cache(maxsize=None)
def _validator(path: str) -> Draft202012Validator:
    return _Validator(_parsed(path))


def validate(data: dict, path: str) -> dict:
    """Check ``data`` against the schema file at ``path`` (defaults filled in, in place).

    An error is one short message naming the key (``what`` key ``a.b.c``): an unknown key with
    the nearest valid one, any other error with the schema's own sentence. Snakemake's message
    printed the whole config and the whole schema (hundreds of lines for one misspelt key)."""
    validator = _validator(str(Path(path).resolve()))
    errors = list(validator.iter_errors(data))
    # A key of a training section that fails its check inside allOf also makes every key of the
    # section "unevaluated": that error names no unknown key; the key's own error says more.
    real = [e for e in errors if not _spurious_unevaluated(e, validator.schema)]
    error = best_match(real or errors)
    if error is not None:
        what = "study" if Path(path).name.startswith("study") else "config"
        raise WorkflowError(explain(error, validator.schema, what))
    return data


MAX_MESSAGE = 300  # the schema's sentence quotes the offending value: a whole section, at worst


def explain(error, root: dict, what: str = "config") -> str:
    """One or two lines for a jsonschema ``ValidationError`` of a config (or a study file)."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        # the alternatives of the instance's own type (e.g. the object form of judge.serve)
        fitting = [e for e in error.context if not (e.validator == "type" and not e.relative_path)]
        if fitting:
            return explain(best_match(fitting), root, what)
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(error.instance, dict):
        allowed = sorted(_property_names(error.schema, root, error.instance))
        unknown = sorted(k for k in error.instance if k not in allowed)
        if unknown:
            lines = [unknown_key(f"{where}.{k}" if where else k, allowed, what) for k in unknown]
            return "\n".join(lines)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            return "\n".join(f"{what} key {where + '.' if where else ''}{k} must be set" for k in missing)
    message = error.message if len(error.message) <= MAX_MESSAGE else error.message[:MAX_MESSAGE] + " ..."
    return f"{what} key {where}: {message}" if where else f"{what}: {message}"


def unknown_key(key: str, allowed, what: str = "config") -> str:
    """``config key a.b.gama is not a setting; did you mean a.b.gamma?`` (or the keys there are)."""
    parent, _, name = key.rpartition(".")
    near = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    if near:
        hint = f"did you mean {parent + '.' if parent else ''}{near[0]}?"
    else:
        hint = f"the keys{' under ' + parent if parent else ''} are: {', '.join(sorted(allowed))}"
    return f"{what} key {key} is not a setting; {hint}"


def _spurious_unevaluated(error, root: dict) -> bool:
    return (error.validator == "unevaluatedProperties" and isinstance(error.instance, dict)
            and set(error.instance) <= _property_names(error.schema, root, error.instance))


def _property_names(subschema: dict, root: dict, instance=None) -> set[str]:
    """Names a (sub)schema defines for ``instance``: its ``properties`` and those of its ``allOf``
    parts and local ``$ref`` targets (the training sections take train_common's keys through
    allOf), and of the ``then`` of each ``if`` the instance meets (``else`` where it does not): a
    named method takes its base's keys so. A key that fails its check there is still a setting; the
    check's own error says what is wrong with it."""
    names = set(subschema.get("properties", {}))
    parts = list(subschema.get("allOf", []))
    if "$ref" in subschema:
        parts.append(subschema)
    if "if" in subschema and isinstance(instance, dict):
        if Draft202012Validator(root).evolve(schema=subschema["if"]).is_valid(instance):  # fills in no default
            parts += [subschema["if"], *([subschema["then"]] if "then" in subschema else [])]
        elif "else" in subschema:
            parts.append(subschema["else"])
    for part in parts:
        if "$ref" in part and part["$ref"].startswith("#/"):
            node = root
            for step in part["$ref"][2:].split("/"):
                node = node[step]
            names |= _property_names(node, root, instance)
        elif part is not subschema:
            names |= _property_names(part, root, instance)
    return names

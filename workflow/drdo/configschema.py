"""JSON Schema checks of a config or a study file, before any job runs.

The same check as ``snakemake.utils.validate`` (Draft 2020-12, the schema's ``default`` values
filled in, Snakemake's ``WorkflowError`` naming the key), but each schema is read once per loaded
copy of this module (the Snakefiles load it once per workflow parse, ``workflow/rules/code.smk``).
Snakemake's own function re-reads the schema through YTE's pure-Python YAML templating on every
call, once for each of a study's 125 module instances: about a third of the study's dry run.
Our schemas use no YTE templates, so PyYAML's C parser reads them to the same objects
(``tests/test_configschema.py``).

No torch: the Snakefiles load this file directly.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, ValidationError, validators
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
    """Check ``data`` against the schema file at ``path`` (defaults filled in, in place)."""
    try:
        _validator(str(Path(path).resolve())).validate(data)
    except ValidationError as e:
        raise WorkflowError("Error validating config file.", e)
    return data

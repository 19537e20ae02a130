"""The workflow's schema check (drdo.configschema) against the one it replaces, snakemake.utils.validate."""

import copy
import re
from pathlib import Path

import pytest
import yaml
from snakemake.common.configfile import _load_configfile
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate as snakemake_validate

from drdo import configschema

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "workflow" / "schemas"
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
STUDY = yaml.safe_load((REPO / "config" / "studies" / "drdo-gold-small.yaml").read_text())


@pytest.mark.parametrize("name", ["config.schema.yaml", "study.schema.yaml"])
def test_schemas_read_as_snakemake_reads_them(name):
    """Snakemake reads a schema through YTE templating; ours use none, so the C parser gives the same."""
    path = str(SCHEMAS / name)
    assert configschema.schema(path) == _load_configfile(path, filetype="Schema")


def _edited(data, key, value):
    data = copy.deepcopy(data)
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


def _verdict(check, data, schema):
    try:
        check(data, schema)
    except WorkflowError as e:
        return str(e)
    return None


@pytest.mark.parametrize("schema, data", [
    ("config.schema.yaml", CONFIG),
    ("config.schema.yaml", _edited(CONFIG, "align.drdo.gamma", -1)),
    ("config.schema.yaml", _edited(CONFIG, "out_dir", "")),
    ("config.schema.yaml", _edited(CONFIG, "sft.alpha", 1)),
    ("config.schema.yaml", _edited(CONFIG, "train.batch_size", "32")),
    ("config.schema.yaml", _edited(CONFIG, "resources.default.gpu", -1)),
    ("config.schema.yaml", _edited(CONFIG, "lengths", KeyError)),
    ("study.schema.yaml", STUDY),
    ("study.schema.yaml", _edited(STUDY, "seeds.train", [])),
    ("study.schema.yaml", _edited(STUDY, "design", "full")),
])
def test_same_verdict_as_snakemake_with_a_short_message(schema, data):
    path = str(SCHEMAS / schema)
    ours, theirs = copy.deepcopy(data), copy.deepcopy(data)
    expected = _verdict(snakemake_validate, theirs, path)
    got = _verdict(configschema.validate, ours, path)
    assert ours == theirs  # the same defaults filled in
    if data is CONFIG or data is STUDY:
        assert expected is None and got is None
    else:  # Snakemake's message holds the whole config and schema; ours one line naming the key
        assert expected is not None and "Error validating config file." in expected
        assert got is not None and len(got.splitlines()) == 1 and len(got) < 400
        assert got.startswith("study key " if schema.startswith("study") else "config key ")


@pytest.mark.parametrize("key, value, message", [
    ("algin", {}, "config key algin is not a setting; did you mean align?"),
    ("align.drdo.gama", 1.0, "config key align.drdo.gama is not a setting; did you mean align.drdo.gamma?"),
    ("align.dpo.gamma", 2.0, "config key align.dpo.gamma is not a setting; the keys under align.dpo are: batch_size, "),
    ("data.files.comparison", "x.jsonl", "config key data.files.comparison is not a setting; did you mean "
                                         "data.files.comparisons?"),
    ("resources.sfft", {}, "config key resources.sfft is not a setting; did you mean resources.sft?"),
    ("train.batch_size", "32", "config key train.batch_size: '32' is not of type 'integer'"),  # not "unevaluated"
    ("align.drdo.gamma", -1, "config key align.drdo.gamma: -1 is less than the minimum of 0"),
    ("sft.dtype", "float16", "config key sft.dtype: 'float16' is not one of ['float32', 'bfloat16']"),
    ("judge.serve", {"gguf": "smollm2"}, "config key judge.serve.threads must be set"),
    ("lengths", KeyError, "config key lengths must be set"),
])
def test_the_message_names_the_key_and_the_nearest_valid_one(key, value, message):
    got = _verdict(configschema.validate, _edited(CONFIG, key, value), str(SCHEMAS / "config.schema.yaml"))
    assert got is not None and got.startswith(message)


def test_absolute_out_dirs_are_valid():
    for schema, data in (("config.schema.yaml", CONFIG), ("study.schema.yaml", STUDY)):
        assert _verdict(configschema.validate, _edited(data, "out_dir", "/scratch/me/results/"), str(SCHEMAS / schema)) is None


def test_defaults_are_filled_with_copies(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text('$schema: "https://json-schema.org/draft/2020-12/schema"\ntype: object\n'
                    "properties:\n  levels: {type: array, default: [1, 2]}\n  name: {type: string}\n")
    a, b, theirs = {"name": "a"}, {"name": "b"}, {"name": "a"}
    configschema.validate(a, str(path))
    configschema.validate(b, str(path))
    snakemake_validate(theirs, str(path))
    assert a == theirs == {"name": "a", "levels": [1, 2]}
    a["levels"].append(3)
    assert b["levels"] == [1, 2]  # not the same list through the cached schema


@pytest.mark.parametrize("section, message", [
    ({"base": "drdo", "gamma": -1}, "config key align.x.gamma: -1 is less than the minimum of 0"),
    ({"base": "drdo", "student_reward": "logprb"}, "config key align.x.student_reward: 'logprb' is not one of ['head', 'logprob']"),
    ({"base": "rdpo", "epsilon": 0.7}, "config key align.x.epsilon: 0.7 is greater than or equal to the maximum of 0.5"),
    ({"base": "dpo", "beta": 0}, "config key align.x.beta: 0 is less than or equal to the minimum of 0"),
    # a key of its base is a setting (the nearest one); another base's is not
    ({"base": "drdo", "gama": 1.0}, "config key align.x.gama is not a setting; did you mean align.x.gamma?"),
    ({"base": "dpo", "gamma": 1.0}, "config key align.x.gamma is not a setting; the keys under align.x are: base, batch_size, beta,"),
])
def test_a_named_methods_keys_get_their_own_checks(section, message):
    """A named method takes its base's keys through the schema's if/then: a value of one that fails
    its check gets that check's message, not "is not a setting"."""
    data = _edited(_edited(CONFIG, "align.methods", ["x"]), "align.x", section)
    got = _verdict(configschema.validate, data, str(SCHEMAS / "config.schema.yaml"))
    assert got is not None and got.startswith(message) and len(got.splitlines()) == 1
    assert _verdict(snakemake_validate, copy.deepcopy(data), str(SCHEMAS / "config.schema.yaml")) is not None


def test_a_named_method_with_valid_keys_passes():
    data = _edited(_edited(CONFIG, "align.methods", ["x"]), "align.x", {"base": "drdo", "gamma": 1, "lr": 1e-5})
    assert _verdict(configschema.validate, data, str(SCHEMAS / "config.schema.yaml")) is None

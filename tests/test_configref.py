"""docs/configuration.md is generated from the schemas (drdo.configref): it is current, every schema
key has a description, and the generator is deterministic."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from drdo import configref

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "python -m drdo.configref > docs/configuration.md"


def test_configuration_reference_is_current():
    expected, _ = configref.render()
    page = REPO / "docs" / "configuration.md"
    current = page.read_text() if page.exists() else ""
    assert current == expected, (
        "docs/configuration.md does not match workflow/schemas/*.schema.yaml and config/config.yaml. "
        f"Regenerate it from the repository root and commit it:\n    {REGENERATE}")


def test_every_schema_key_has_a_description():
    _, missing = configref.render()
    assert not missing, ("schema keys without a `description:` (what the key changes, its allowed values, "
                         "the paper's value where there is one): " + ", ".join(missing))


def test_configuration_reference_lists_every_key_once():
    text, _ = configref.render()
    config_part, study_part = text.split("\n## Study files\n")
    for part, expected in ((config_part, ("align.drdo.gamma", "align.drdo.alpha", "train.lr", "sft.train_on_prompt",
                                          "resources.<rule>.gpu", "data.hub.<name>.revision", "judge.serve.gguf")),
                           (study_part, ("out_dir", "seeds.world", "factors.<name>.levels"))):
        keys = re.findall(r"^\| `([^`]+)` \|", part, flags=re.M)
        assert len(keys) == len(set(keys))
        assert set(expected) <= set(keys)


def test_configuration_reference_is_deterministic():
    """The same page from two processes with different string hash seeds (set and dict orders)."""
    pages = [subprocess.run([sys.executable, "-m", "drdo.configref"], capture_output=True, text=True, check=True,
                            cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert pages[0] == pages[1] == configref.render()[0]


def test_reference_reads_types_defaults_and_finds_undescribed_keys():
    schema = {
        "$defs": {"pos_int": {"type": "integer", "minimum": 1},
                  "train_common": {"description": "shared", "type": "object",
                                   "properties": {"lr": {"type": "number", "exclusiveMinimum": 0,
                                                         "description": "step size"}}}},
        "properties": {
            "name": {"type": "string", "description": "a | name"},
            "train": {"allOf": [{"$ref": "#/$defs/train_common"}], "description": "defaults"},
            "sft": {"allOf": [{"$ref": "#/$defs/train_common"}], "description": "SFT",
                    "properties": {"steps": {"$ref": "#/$defs/pos_int"}}},
        },
    }
    lines, missing = configref.config_reference(schema, {"name": "x", "train": {"lr": 0.5}, "sft": {"steps": 3}})
    text = "\n".join(lines)
    assert missing == ["sft.steps"]
    assert "| `name` | string | `x` | a \\| name |" in text
    assert "| `train.lr` | number > 0 | `0.5` | step size |" in text
    assert "| `sft.steps` | integer ≥ 1 | `3` |  |" in text

import json
import os
from pathlib import Path

import yaml
from snakemake.utils import update_config, validate


# A user config (--configfile / --config) only needs the keys it changes: start from the
# embedded default wherever the workflow is run from.
_merged = yaml.safe_load((Path(workflow.basedir) / "config" / "config.yaml").read_text())
update_config(_merged, config)
config.update(_merged)

# Stop before any job if the config does not match the schema (the error names the key).
validate(config, schema="../schemas/config.schema.yaml")

OUT = config["out_dir"].rstrip("/")
# The default never needs a hub; a failed hub look-up would only cost ~50 s of retries.
if config["model"]["name_or_path"] == "tiny" and config["data"]["source"] != "hub":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
METHODS = config["align"]["methods"]
SPLITS = config["align"]["splits"]
POLICIES = ["sft"] + [f"{m}-{s}" for m in METHODS for s in SPLITS]
ENV = "../../envs/drdo.yaml"


wildcard_constraints:
    method="drdo|dpo|edpo",
    split="all|hc_he|lc_le",
    member=r"\d+",
    policy=r"sft|(drdo|dpo|edpo)-(all|hc_he|lc_le)",


def as_json(obj):
    """A config subset as the --params JSON of a stage (sorted: stable across runs)."""
    return json.dumps(obj, sort_keys=True)


def train_params(*sections):
    """``train`` defaults overridden by each named section in turn, e.g. ("align", "drdo")."""
    params = dict(config["train"])
    for path in sections:
        node = config
        for key in path.split("."):
            node = node[key]
        params.update(node)
    return params


def raw_file(name):
    """A raw input: written by the synthetic world, or a user file from data.files."""
    if config["data"]["source"] == "synthetic":
        return f"{OUT}/raw/{name}.jsonl"
    path = config["data"].get("files", {}).get(name)
    if not path:
        raise ValueError(f"config key data.files.{name} must be set when data.source is 'files'")
    return path

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


include: "judge_guard.smk"


# Stop before any job if the config does not match the schema (the error names the key).
validate(config, schema="../schemas/config.schema.yaml")

OUT = config["out_dir"].rstrip("/")
# The default never needs a hub; a failed hub look-up would only cost ~50 s of retries.
if config["model"]["name_or_path"] == "tiny":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
METHODS = config["align"]["methods"]
SPLITS = config["align"]["splits"]
MEMBERS = list(range(config["ensemble"]["size"]))
GOLD = config["synthetic"].get("gold", {})  # gold-reward parameters of the synthetic world
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


# The gold reward reads the synthetic world's facts; real text has none.
if config["data"]["source"] != "synthetic":
    if config["align"]["drdo"]["teacher"] == "gold":
        raise ValueError("config key align.drdo.teacher: 'gold' exists only for data.source: synthetic")
    if "gold" in config["winrates"]["scorers"]:
        raise ValueError("config key winrates.scorers: 'gold' exists only for data.source: synthetic")


SYNTHETIC_FILES = {"comparisons": "comparisons.jsonl", "sft_train": "sft_train.jsonl",
                   "sft_test": "sft_test.jsonl", "news": "news_test.jsonl"}


def raw_file(name):
    """A raw input: written by the synthetic world, or a user file from data.files."""
    if config["data"]["source"] == "synthetic":
        return f"{OUT}/raw/{SYNTHETIC_FILES[name]}"
    path = config["data"].get("files", {}).get(name)
    if not path:
        raise ValueError(f"config key data.files.{name} must be set when data.source is 'files'")
    return path


# ---------------------------------------------------------------- per-rule parameters
def oracle_params():
    params = train_params("oracle")
    if config["data"]["source"] == "synthetic":  # to report the Bayes-optimal accuracy
        params["synthetic_labels"] = {
            "gold": GOLD,
            "label_temperature": config["synthetic"].get("label_temperature", 0.25),
        }
    return as_json(params)


def member_params(wildcards):
    params = train_params("ensemble")
    params["head_seed"] = params["head_seed"] + int(wildcards.member)
    return as_json(params)


def align_params(wildcards):
    params = train_params("align.common", f"align.{wildcards.method}")
    if wildcards.method == "edpo":
        params["ensemble_size"] = config["ensemble"]["size"]
    return as_json(params)


def method_tables(wildcards):
    """The precomputed tables a method reads: the only data difference between methods."""
    return {
        "drdo": [f"{OUT}/tables/{config['align']['drdo']['teacher']}_rewards.parquet"],
        "dpo": [f"{OUT}/tables/reference_logps.parquet"],
        "edpo": [f"{OUT}/tables/reference_logps.parquet", f"{OUT}/tables/ensemble_rewards.parquet"],
    }[wildcards.method]


def policy_method(wildcards):
    return wildcards.policy.split("-")[0]


def policy_split(wildcards):
    return wildcards.policy.split("-", 1)[1] if "-" in wildcards.policy else "-"

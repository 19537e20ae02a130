# The study's expansion (see workflow/study.smk): factors x seeds -> worlds and runs, as module instances.
import copy
import json
import os
from pathlib import Path
from types import SimpleNamespace

import yaml
from snakemake.utils import update_config

REPO = str(Path(str(workflow.current_basedir)).parents[1])


include: "code.smk"


if "study" not in config:
    raise ValueError("config key study: give the study file, e.g. --config study=config/studies/drdo-gold.yaml")
STUDY_FILE = config["study"]
STUDY = yaml.safe_load(Path(STUDY_FILE).read_text())
check_schema(STUDY, "study.schema.yaml")
ROOT = STUDY["out_dir"].rstrip("/")


def _path(p):
    return p if os.path.exists(p) else os.path.join(REPO, p)


def _set(cfg, key, value):
    """cfg with the dotted ``key`` set to ``value`` (nested dicts created as needed)."""
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"study {STUDY_FILE}: factor key {key!r} is not a config key")
        node = node[part]
    return node


def _fmt(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


# The study's base config: the embedded default, then the study's config files and overrides.
BASE = yaml.safe_load(Path(REPO, "config", "config.yaml").read_text())
for f in STUDY.get("configfiles", []):
    update_config(BASE, yaml.safe_load(Path(_path(f)).read_text()))
update_config(BASE, copy.deepcopy(STUDY.get("config", {})))
FACTORS = STUDY["factors"]
DEFAULTS = {name: _get(BASE, f["key"]) for name, f in FACTORS.items()}

# One-factor-at-a-time: the baseline, and each factor at each level other than its default.
VARIANTS = [("default", {})] + [
    (f"{name}={_fmt(level)}", {name: level})
    for name, f in FACTORS.items()
    for level in f["levels"]
    if level != DEFAULTS[name]
]
METHODS = BASE["align"]["methods"]
SPLITS = BASE["align"]["splits"]
WORLD_SEEDS = STUDY["seeds"]["world"]
TRAIN_SEEDS = STUDY["seeds"]["train"]


def _without_save_every(node):
    """``node`` without the resume-state interval, wherever a section sets it (common.smk's
    RESUME_KEYS): how often a job keeps a resume state changes no artifact."""
    if isinstance(node, dict):
        return {k: _without_save_every(v) for k, v in node.items() if k != "save_every"}
    return [_without_save_every(v) for v in node] if isinstance(node, list) else node


def _world_key(cfg):
    """What the world-level artifacts depend on: every key but the align keys, the folders and the
    compute settings (threads and resources change how fast a job runs, not what it makes)."""
    skip = ("align", "out_dir", "upstream_dir", "resume_dir", "threads", "resources")
    return json.dumps(_without_save_every({k: v for k, v in cfg.items() if k not in skip}), sort_keys=True)


def _method_key(cfg, method):
    """What a method's models depend on: its name (two methods with equal keys, e.g. cdpo and rdpo,
    are still two models) and the keys it trains with: its section or, for a named method, its
    base's section under its own overrides (as common.smk's method_config), so a factor on a key
    the named method overrides leaves it untrained."""
    section = cfg["align"][method]
    base = section.get("base", method)
    keys = {**cfg["align"][base], **section} if base != method else section
    return json.dumps(_without_save_every([method, _world_key(cfg), cfg["train"], cfg["align"]["common"], keys]),
                      sort_keys=True)


# Expand: runs in order (baseline first), worlds and method cells deduplicated by their keys.
WORLDS = {}  # world key -> {"name", "dir", "config"}
CELLS = {}  # method key -> run dir that trains it
RUNS = []
for variant, levels in VARIANTS:
    for ws in WORLD_SEEDS:
        for ts in TRAIN_SEEDS:
            cfg = copy.deepcopy(BASE)
            for name, level in levels.items():
                _set(cfg, FACTORS[name]["key"], level)
            _set(cfg, "synthetic.seed", ws)
            _set(cfg, "align.common.seed", ts)
            wkey = _world_key(cfg)
            if wkey not in WORLDS:
                world_levels = "".join(f"-{n}={_fmt(l)}" for n, l in levels.items() if not FACTORS[n]["key"].startswith("align."))
                name = f"s{ws}{world_levels}"
                WORLDS[wkey] = {"name": name, "dir": f"{ROOT}/worlds/{name}",
                                "config": {**copy.deepcopy(cfg), "out_dir": f"{ROOT}/worlds/{name}", "upstream_dir": None}}
            world = WORLDS[wkey]
            run_dir = f"{ROOT}/runs/{variant}/s{ws}-t{ts}"
            owned = []
            for m in METHODS:
                mkey = _method_key(cfg, m)
                if mkey not in CELLS:
                    CELLS[mkey] = run_dir
                    owned.append(m)
            scores = {p: f"{world['dir']}/scores/{p}.parquet" for p in ("sft", "reference")}
            for m in METHODS:
                for s in SPLITS:
                    scores[f"{m}-{s}"] = f"{CELLS[_method_key(cfg, m)]}/scores/{m}-{s}.parquet"
            RUNS.append({"variant": variant, "levels": levels, "world_seed": ws, "train_seed": ts,
                         "world": world["name"], "dir": run_dir, "owned": owned, "scores": scores,
                         "config": {**cfg, "out_dir": run_dir, "upstream_dir": world["dir"],
                                    "align": {**cfg["align"], "methods": owned or METHODS}}})


# ---------------------------------------------------------------- module instances
# `module NAME: ...` and `use rule ... from NAME as PREFIX_*` compile to these two calls; calling
# them in a loop makes one instance per world and per run.
SNAKEFILE = os.path.join(REPO, "Snakefile")
WORLD_RULES = ["synthetic_world", "normalise", "eval_prompts", "base_model", "oracle_base", "split", "sft", "oracle",
               "reward_model", "oracle_table", "ensemble_table", "gold_table", "reference_table", "generate",
               "score_policy", "score_reference"]
RUN_RULES = ["align", "generate", "score_policy"]
for i, world in enumerate(WORLDS.values()):
    world["prefix"] = f"w{i}_"
    workflow.module(name=f"world{i}", snakefile=SNAKEFILE, config=world["config"])
    workflow.userule(rules=WORLD_RULES, from_module=f"world{i}", name_modifier=f"w{i}_*")(lambda: None)
# The first run (the baseline of the first seeds, which trains every method) also gets the
# main workflow's win-rate table, validation table and figures, for the study's report.
REPORT_RULES = ["winrates", "validation_report", "training_curves", "winrate_forest", "length_distribution"]
for i, run in enumerate(r for r in RUNS if r["owned"]):
    run["prefix"] = f"r{i}_"
    workflow.module(name=f"run{i}", snakefile=SNAKEFILE, config=run["config"])
    rules = RUN_RULES + (REPORT_RULES if i == 0 else [])
    workflow.userule(rules=rules, from_module=f"run{i}", name_modifier=f"r{i}_*")(lambda: None)
FIRST = RUNS[0]["dir"]
RUN_REPORT = [f"{FIRST}/winrates.csv", f"{FIRST}/validation.csv", f"{FIRST}/figures/lengths.png"] + [
    f"{FIRST}/figures/curves_{g}.png" for g in SPLITS + ["world"]] + [
    f"{FIRST}/figures/forest_{s}.png" for s in BASE["winrates"]["scorers"]]


def _score_lineages():
    """{score file: lineage} from the params of the module rule that writes it."""
    out = {}
    for world in WORLDS.values():
        ref = workflow.get_rule(world["prefix"] + "score_reference").params.lineage
        out[f"{world['dir']}/scores/reference.parquet"] = ref
        policy = workflow.get_rule(world["prefix"] + "score_policy").params.lineage
        out[f"{world['dir']}/scores/sft.parquet"] = policy(SimpleNamespace(policy="sft"))
    for run in RUNS:
        if run["owned"]:
            policy = workflow.get_rule(run["prefix"] + "score_policy").params.lineage
            for m in run["owned"]:
                for s in SPLITS:
                    out[f"{run['dir']}/scores/{m}-{s}.parquet"] = policy(SimpleNamespace(policy=f"{m}-{s}"))
    return out



SCORE_FILES = sorted({f for run in RUNS for f in run["scores"].values()})
MANIFEST = [{k: run[k] for k in ("variant", "levels", "world_seed", "train_seed", "world", "scores")} for run in RUNS]
STUDY_PARAMS = {"name": STUDY["name"], "factors": {n: {"key": f["key"], "default": DEFAULTS[n]} for n, f in FACTORS.items()},
                "splits": SPLITS, "methods": METHODS, "scorers": BASE["winrates"]["scorers"],
                "unfinished": BASE["winrates"]["unfinished"],
                "n_draws": STUDY.get("interval_draws", 4000), "seed": STUDY.get("interval_seed", 0)}
STUDY_TEMPERATURE = STUDY.get("figure_temperature", 0.7)
# a figure per scorer, and the Oracle-vs-gold disagreement where both exist (not on real data)
STUDY_FIGURES = BASE["winrates"]["scorers"] + (["disagreement"] if {"oracle", "gold"} <= set(BASE["winrates"]["scorers"]) else [])

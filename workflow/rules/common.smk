import hashlib
import importlib.util
import json
import os
import shlex
from pathlib import Path

import yaml
from snakemake.utils import update_config


# The repository root, from this file's place in it (not the main Snakefile's: a study includes
# this workflow as a module from workflow/study.smk).
REPO = str(Path(str(workflow.current_basedir)).parents[1])


include: "code.smk"


# A user config (--configfile / --config) only needs the keys it changes: start from the
# embedded default wherever the workflow is run from.
# PyYAML's C parser where it has one: a study's 125 module instances each read this file; the
# pure-Python parser took 10x as long.
_merged = yaml.load((Path(REPO) / "config" / "config.yaml").read_text(), Loader=tree_module("configschema").SAFE_YAML)
update_config(_merged, config)
config.update(_merged)


include: "judge_guard.smk"


# Stop before any job if the config does not match the schema (the error names the key).
check_schema(config, "config.schema.yaml")

OUT = config["out_dir"].rstrip("/")
# World-level artifacts (raw data, splits, base, SFT, Oracle, ensemble, tables, SFT and reference
# scores) depend on no align-level key; a study points several runs at one world's folder.
UP = (config.get("upstream_dir") or OUT).rstrip("/")
# A GGUF starting model (drdo/gguf.py, loaded as a file: standard library only): its file, found
# (or refused with the key in the error) before any job runs.
_gguf_spec = importlib.util.spec_from_file_location("drdo_gguf", os.path.join(REPO, "workflow", "drdo", "gguf.py"))
gguf = importlib.util.module_from_spec(_gguf_spec)
_gguf_spec.loader.exec_module(gguf)
_gguf_model = gguf.model_spec(config["model"]["name_or_path"])
BASE_GGUF = str(gguf.resolve(_gguf_model, "model.name_or_path")) if _gguf_model else None
# The default (and a GGUF) never needs a hub; a failed hub look-up would only cost ~50 s of retries.
if config["model"]["name_or_path"] == "tiny" or BASE_GGUF:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
METHODS = config["align"]["methods"]
# Align methods: an objective's own section (align.drdo, ...), or a named method: a section
# align.<name> with `base` (the objective it runs) and overrides of that base's keys.
OBJECTIVE_METHODS = ("drdo", "dpo", "edpo", "cdpo", "rdpo", "ipo")


def method_base(method):
    """The objective a method runs (itself, or a named method's `base`)."""
    if method in OBJECTIVE_METHODS:
        return method
    section = config["align"].get(method)
    if not isinstance(section, dict) or "base" not in section:
        raise ValueError(f"config key align.methods: {method!r} is neither one of {list(OBJECTIVE_METHODS)} nor a "
                         f"named method (a section align.{method} with a `base`)")
    return section["base"]


def method_config(method):
    """The method's align keys: its base's section, then a named method's overrides."""
    base = method_base(method)
    own = {k: v for k, v in config["align"][method].items() if k != "base"} if base != method else {}
    return {**config["align"][base], **own}


for _m in METHODS:
    method_base(_m)
SPLITS = config["align"]["splits"]
MEMBERS = list(range(config["ensemble"]["size"]))
GOLD = config["synthetic"].get("gold", {})  # gold-reward parameters of the synthetic world
LENGTHS = config["lengths"]
if sum((LENGTHS["max_prompt_length"], LENGTHS["max_new_tokens"], 2)) > LENGTHS["max_length"]:
    raise ValueError("config key lengths.max_length must be at least lengths.max_prompt_length plus "
                     "lengths.max_new_tokens plus 2 (BOS, EOS), so every generation can be scored whole")
# What every tokenising stage needs: the token budgets and the prompt format (true when
# model.chat_template is true or names a template file: the base rule sets that on the tokenizer).
TOKENS = {"max_prompt_length": LENGTHS["max_prompt_length"], "max_length": LENGTHS["max_length"],
          "chat_template": bool(config["model"].get("chat_template", False))}
# How every stage that runs a model loads it (drdo.modeling.pretrained_kwargs): the training,
# table, generation and scoring jobs. The base stage only writes a checkpoint, which does not
# record the kernel, so it neither takes nor re-runs for it.
LOADING = {"attn_implementation": config["model"]["attn_implementation"]}
# task: tldr (summarisation, TL;DR comparisons) or ultrafeedback (instruction following)
TASK = config.get("task", "tldr")
EVAL_SETS = {"tldr": ["tldr", "news"], "ultrafeedback": ["ultrafeedback", "alpaca_eval"]}[TASK]
ORACLE_BASE = config["oracle"].get("base")  # null: the Oracle starts from the policy's SFT
if ORACLE_BASE and (gguf.model_spec(ORACLE_BASE) or ORACLE_BASE == "tiny"):
    raise ValueError(f"config key oracle.base: {ORACLE_BASE!r} is not supported for the Oracle (a Hugging Face "
                     "model id or local directory; a GGUF or `tiny` base only as model.name_or_path)")


def check_revision(name, revision, key, name_key):
    """A revision pins a hub model: refused (naming ``key``) for `tiny`, a GGUF or a local folder,
    which would load the same whatever it says."""
    if revision is not None and (name == "tiny" or gguf.model_spec(name) or os.path.isdir(name)):
        raise ValueError(f"config key {key}: {name_key} {name!r} is not a Hugging Face hub id, so a "
                         f"revision cannot pin it; set {key} to null")


def check_local_model(name, key):
    """A name that can only be a local directory (absolute, ~ or . first, more than one '/', a
    backslash: a hub id is <name> or <owner>/<name>) must be one: refused before any job, naming
    ``key`` (the base job would only say it could not reach the hub). Any other name that is neither
    a directory nor a hub model fails in the base job, which names ``key`` too (drdo/base_model.py)."""
    if name == "tiny" or gguf.model_spec(name) or os.path.isdir(name):
        return
    if Path(name).is_absolute() or name.startswith((".", "~")) or len(Path(name).parts) > 2 or "\\" in name:
        raise ValueError(f"config key {key}: {name!r} names a local directory, and there is none (a relative path "
                         f"is read from the working directory, {os.getcwd()})")


check_local_model(config["model"]["name_or_path"], "model.name_or_path")
if ORACLE_BASE:
    check_local_model(ORACLE_BASE, "oracle.base")
check_revision(config["model"]["name_or_path"], config["model"].get("revision"), "model.revision", "model.name_or_path")
if config["oracle"].get("base_revision") is not None and not ORACLE_BASE:
    raise ValueError("config key oracle.base_revision: set only with oracle.base (without one the Oracle "
                     "starts from the policy's SFT)")
check_revision(ORACLE_BASE or "", config["oracle"].get("base_revision"), "oracle.base_revision", "oracle.base")
POLICIES = ["sft"] + [f"{m}-{s}" for m in METHODS for s in SPLITS]
ENV = "../../envs/drdo.yaml"
# envs/drdo.yaml installs this checkout from ${DRDO_REPO} (pip expands it), wherever Snakemake copies
# the file (under .snakemake/conda/, where a path relative to the file would name another folder).
os.environ.update(DRDO_REPO=REPO)


wildcard_constraints:
    method="|".join(METHODS),
    split="all|hc_he|lc_le",
    member=r"\d+",
    policy=rf"sft|({'|'.join(METHODS)})-(all|hc_he|lc_le)",


def as_json(obj):
    """A config subset as the --params JSON of a stage (sorted: stable across runs)."""
    return json.dumps(obj, sort_keys=True)


def repo_path(path):
    """A repository file named in the config, relative to the working directory or the repo."""
    return path if os.path.exists(path) else os.path.join(REPO, path)


# How often a training job writes its resume state decides how much a kill costs, not what the
# job makes: it is passed apart (resume_args), outside the params and the lineage.
RESUME_KEYS = ("save_every",)


def _section(path):
    """The training keys of a section: a dotted config key, e.g. "align.common" (a named method's
    section without its `base`), or a dict of keys."""
    if isinstance(path, dict):
        return path
    node = config
    for key in path.split("."):
        node = node[key]
    named = path.startswith("align.") and path.split(".", 1)[1] not in (*OBJECTIVE_METHODS, "common")
    return {k: v for k, v in node.items() if not (named and k == "base")}


def _train_keys(*sections):
    """``train`` defaults overridden by each section in turn (see ``_section``)."""
    params = {**config["train"], **TOKENS, **LOADING}
    for path in sections:
        params.update(_section(path))
    return params


def _set_by(key, *sections):
    """The config key that sets training key ``key`` for ``sections``: the last section that has
    it, else train's (for the errors)."""
    for path in reversed(sections):
        if isinstance(path, str) and key in _section(path):
            return f"{path}.{key}"
    return f"train.{key}"


def train_params(*sections):
    """What a training job makes depends on: ``_train_keys`` but the resume keys."""
    params = {k: v for k, v in _train_keys(*sections).items() if k not in RESUME_KEYS}
    if params.get("deepspeed"):  # its content, not its path: an edit re-runs the jobs, a move does not
        try:
            params["deepspeed"] = json.loads(Path(repo_path(params["deepspeed"])).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"config key {_set_by('deepspeed', *sections)}: cannot read {params['deepspeed']!r}: {e}")
    return params


# ---------------------------------------------------------------- compute per job
def _resume_root(folder):
    """Resume states of the jobs writing into ``folder``: <folder>/.resume, or under resume_dir a
    sub-folder named after ``folder``, so the runs and worlds of a study never share one."""
    if not config.get("resume_dir"):
        return f"{folder}/.resume"
    path = Path(os.path.normpath(folder))
    # an absolute folder goes under _abs_: joining its root would drop resume_dir altogether
    parts = ["_up_" if part == ".." else part for part in path.parts[1 if path.is_absolute() else 0:]]
    return os.path.join(config["resume_dir"].rstrip(os.sep), *(["_abs_"] if path.is_absolute() else []), *parts)


RESUME = _resume_root(OUT)
RESUME_UP = _resume_root(UP)


def resume_args(root, name, *sections):
    """A training job's ``--resume <root>/<name> --save-every N``, ``N`` from ``_train_keys(*sections)``
    (the name and each section may be a function of the wildcards). Where and how often a job keeps
    its resume state changes what a kill costs, not what the job makes, so a change to
    ``resume_dir`` or ``save_every`` must re-run nothing: the param is a function of the job's
    output, which Snakemake counts as derived and leaves out of the params it compares."""
    def args(wildcards, output):
        value = lambda x: x(wildcards) if callable(x) else x  # noqa: E731
        every = _train_keys(*map(value, sections))["save_every"]
        return f"--resume {shlex.quote(os.path.join(root, value(name)))} --save-every {every}"
    return args


# Inputs made with other torch / transformers / accelerate / deepspeed versions: error | warn.
# It decides whether a job goes on, not what it makes: like resume_args, a param of the job's
# output, which Snakemake counts as derived and leaves out of the params it compares (switching it
# re-runs nothing).
def version_mismatch(wildcards, output):
    return config["version_mismatch"]


def res(name, key):
    """A job's resource from the config's ``resources`` section (the rule's entry, else default)."""
    return config["resources"].get(name, {}).get(key, config["resources"]["default"][key])


def launch(name):
    """The command that starts the stage of the torch job ``name`` (drdo/launch.py), on
    resources.<name>.gpu GPUs of its own, or that many ranks on the CPU where resources.cpu_ranks
    says so. The flag is part of the command, so switching it re-runs the torch jobs (what CPU
    ranks made stands in for a GPU run only in tests and CI)."""
    cpu_ranks = " --cpu-ranks" if config["resources"]["cpu_ranks"] else ""
    return f"python -m drdo.launch --rule {name} --processes {{resources.gpu}}{cpu_ranks} --threads {{threads}}"



# ---------------------------------------------------------------- code and lineage
# Each job's params carry its lineage: a hash of its own params, the code it runs and the
# lineage of every input. A change anywhere upstream (config or code) changes the params of
# every job downstream, so Snakemake re-runs them even where an intermediate file is missing
# (it would otherwise trust a downstream file that looks fresh), and aggregates refuse inputs
# whose recorded lineage is not the current one (code(stage): code.smk).


def digest(*parts):
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The gold reward reads the synthetic world's facts; real text has none.
if TASK == "ultrafeedback" and config["data"]["source"] == "synthetic":
    raise ValueError("config key data.source: task ultrafeedback reads files or the hub, not the synthetic world")
if config["data"]["source"] != "synthetic":
    for _m in ["drdo"] + [m for m in METHODS if method_base(m) == "drdo"]:
        if method_config(_m)["teacher"] == "gold":
            raise ValueError(f"config key align.{_m}.teacher: 'gold' exists only for data.source: synthetic")
    if "gold" in config["winrates"]["scorers"]:
        raise ValueError("config key winrates.scorers: 'gold' exists only for data.source: synthetic")


SYNTHETIC_FILES = {"comparisons": "comparisons.jsonl", "sft_train": "sft_train.jsonl",
                   "sft_test": "sft_test.jsonl", "news": "news_test.jsonl"}
# The raw sources of each task (data.files / data.hub entries), by the data stage that reads them
# (cli.py's TRAIN_SOURCES, EVAL_SOURCES): "data", the normalise rule (pairs, SFT rows); "eval", the
# eval_prompts rule (UltraFeedback's held-out prompts are carved from the preferences by
# data.holdout, so both read those). Apart, so a change to which prompts are evaluated (eval.*)
# re-runs no training job.
PART_SOURCES = {"tldr": {"data": ["comparisons", "sft_train"], "eval": ["sft_test", "news"]},
                "ultrafeedback": {"data": ["preferences"], "eval": ["preferences", "alpaca_eval"]}}[TASK]
RAW_SOURCES = list(dict.fromkeys(PART_SOURCES["data"] + PART_SOURCES["eval"]))


def raw_inputs(part):
    """The local inputs of the rule of ``part`` ("data" or "eval"), as a rule's input function
    (none for data.source: hub)."""
    def inputs(wildcards):
        if config["data"]["source"] == "hub":
            return {}
        return {name: raw_file(name) for name in PART_SOURCES[part]}
    return inputs


def source_args(wildcards, input):
    """A data rule's local raw files as its command's --<source> options."""
    return " ".join(f"--{k.replace('_', '-')} {shlex.quote(v)}" for k, v in input.items())


def hub_specs(part):
    """data.hub (dataset ids and pinned revisions) of the sources ``part`` reads, when the data
    comes from the hub (every source of the task must be set: checked before any job)."""
    if config["data"]["source"] != "hub":
        return {}
    hub = config["data"].get("hub") or {}
    for name in RAW_SOURCES:
        if not hub.get(name):
            raise ValueError(f"config key data.hub.{name} must be set when data.source is 'hub' (task {TASK})")
    return {"hub": {name: hub[name] for name in PART_SOURCES[part]}}


def raw_file(name):
    """A raw input: written by the synthetic world, or a user file from data.files."""
    if config["data"]["source"] == "synthetic":
        return f"{UP}/raw/{SYNTHETIC_FILES[name]}"
    path = config["data"].get("files", {}).get(name)
    if not path:
        raise ValueError(f"config key data.files.{name} must be set when data.source is 'files'")
    return path


if config["data"]["source"] == "files":  # named by its key before any job, not as a rule's missing input
    for _name in RAW_SOURCES:
        if not os.path.exists(raw_file(_name)):
            raise ValueError(f"config key data.files.{_name}: {raw_file(_name)} does not exist (a relative "
                             f"path is read from the working directory, {os.getcwd()})")


# ---------------------------------------------------------------- per-rule parameters
def _base_params(model):
    """The base rule's params: model.chat_template as a template file's content (an edit
    re-runs the base model and everything after it; a move does not)."""
    template = model.get("chat_template", False)
    if not isinstance(template, str):
        return model
    try:
        return {**model, "chat_template": Path(repo_path(template)).read_text()}
    except OSError as e:
        raise ValueError(f"config key model.chat_template: cannot read {template!r}: {e}")


# The model keys each kind of starting model reads (drdo/base_model.py, cli.py cmd_base and
# cmd_base_gguf): a key another kind reads is left out, so changing it re-runs nothing.
MODEL_KEYS = {"tiny": ["name_or_path", "chat_template", "seed", "vocab_size", "tiny"],
              "gguf": ["name_or_path", "chat_template", "dtype"],
              "pretrained": ["name_or_path", "chat_template", "dtype", "revision"]}


def model_kind(name):
    return "tiny" if name == "tiny" else "gguf" if gguf.model_spec(name) else "pretrained"


def _model_params(model):
    return {k: model[k] for k in MODEL_KEYS[model_kind(model["name_or_path"])] if k in model}


BASE_PARAMS = _base_params(_model_params(config["model"]))
# The Oracle's own starting model (oracle.base, a pretrained one), made by the same stage with the
# same prompt format.
ORACLE_BASE_PARAMS = _base_params(_model_params({**config["model"], "name_or_path": ORACLE_BASE or config["model"]["name_or_path"],
                                                 "revision": config["oracle"].get("base_revision")}))


def oracle_params():
    params = train_params("oracle")
    for key in ("base", "base_revision"):  # the Oracle's starting model is its --init (and in its lineage)
        params.pop(key, None)
    if config["data"]["source"] == "synthetic":  # to report the Bayes-optimal accuracy
        params["synthetic_labels"] = {
            "gold": GOLD,
            "label_temperature": config["synthetic"].get("label_temperature", 0.25),
        }
    return as_json(params)


def member_params(member):
    params = train_params("ensemble")
    del params["size"]  # a member does not depend on how many others there are
    params["head_seed"] = params["head_seed"] + int(member)
    return as_json(params)


def method_sections(method):
    """The align sections of a method, in the order they override one another: align.common, its
    base's section and a named method's own (dotted keys, so that an error names the right one)."""
    base = method_base(method)
    return ["align.common", f"align.{base}"] + ([f"align.{method}"] if base != method else [])


def align_params(method):
    params = train_params(*method_sections(method))
    if method_base(method) == "edpo":
        params["ensemble_size"] = config["ensemble"]["size"]
    return as_json(params)


def _tables(method):
    """The precomputed tables a method reads: the only data difference between methods."""
    base = method_base(method)
    if base == "drdo":
        return [f"{method_config(method)['teacher']}_rewards"]
    return ["reference_logps", "ensemble_rewards"] if base == "edpo" else ["reference_logps"]


METHOD_TABLES = {m: _tables(m) for m in METHODS}
# The ensemble members are trained only where a method reads their rewards (e-DPO): at the paper's
# scale each is a reward-model run, wasted on a run of DRDO and DPO alone.
TRAINED_MEMBERS = MEMBERS if any("ensemble_rewards" in t for t in METHOD_TABLES.values()) else []


def method_tables(wildcards):
    return [f"{UP}/tables/{t}.parquet" for t in METHOD_TABLES[wildcards.method]]


def run_dir(policy):
    """Folder of a policy's model, generations and scores: SFT (and the reference) are world-level."""
    return UP if policy in ("sft", "reference") else OUT


def policy_method(wildcards):
    return wildcards.policy.split("-")[0]


def policy_split(wildcards):
    return wildcards.policy.split("-", 1)[1] if "-" in wildcards.policy else "-"


# --params of the stages that are not training jobs (one definition: the rules and the lineage use it)
# normalise: the training data (pairs, SFT rows); eval_prompts: the prompts every policy is evaluated
# on, the only stage that reads the eval sample keys. UltraFeedback's held-out prompts (both stages)
# depend on data.holdout.
EVAL_KEYS = {"tldr": ["n_tldr", "n_news", "seed"], "ultrafeedback": ["n_ultrafeedback", "n_alpaca_eval", "seed"]}[TASK]
_HOLDOUT = {"task": TASK, "holdout": config["data"]["holdout"]} if TASK != "tldr" else {}
NORMALISE_PARAMS = as_json({**hub_specs("data"), **_HOLDOUT})
EVAL_PROMPTS_PARAMS = as_json({**{k: config["eval"][k] for k in EVAL_KEYS}, **hub_specs("eval"), **_HOLDOUT})
# split.seed draws the max_validation sample: without one (null) the stage never reads it
SPLIT_PARAMS = as_json({**{k: v for k, v in config["split"].items() if k != "seed" or config["split"].get("max_validation")},
                        **TOKENS})
INFERENCE = {"dtype": config["train"]["dtype"], **LOADING}  # frozen models compute in the training dtype
TABLE_PARAMS = as_json({**TOKENS, "batch_size": config["score"]["batch_size"], **INFERENCE})
# The gold reward exists only in the synthetic world: real data gets no `gold` column.
SCORE_PARAMS = as_json({**config["score"], **TOKENS, **INFERENCE,
                        **({"gold": GOLD} if config["data"]["source"] == "synthetic" else {})})
# generate.vllm counts only where vLLM runs: tuning it does not re-run the loop's generations
GENERATE_PARAMS = as_json({**{k: v for k, v in config["generate"].items()
                              if k != "vllm" or config["generate"]["backend"] == "vllm"}, "max_prompt_length": LENGTHS["max_prompt_length"],
                           "max_new_tokens": LENGTHS["max_new_tokens"], "chat_template": TOKENS["chat_template"],
                           **INFERENCE})
# Every pair any split holds (split.max_validation samples each split's validation pairs
# on its own, so hc_he / lc_le may hold validation pairs that `all` does not).
TABLE_PAIRS = expand(f"{UP}/data/splits/{{split}}.parquet", split=["all", "hc_he", "lc_le"])


# ---------------------------------------------------------------- lineage of each artifact
def local_model(name):
    """A model named by a local directory: its content (Hugging Face loads a directory by that
    name first); a hub id or `tiny`: None (the name is in the params)."""
    return content(name) if name != "tiny" and os.path.isdir(name) else None


def lineage_raw(part=None):
    """The raw sources ``part`` ("data", "eval"; None: all) reads: the synthetic world (one job
    writes every file), or their content."""
    if config["data"]["source"] == "synthetic":
        return digest("raw", config["synthetic"], code("synthetic"))
    names = PART_SOURCES[part] if part else RAW_SOURCES
    if config["data"]["source"] == "hub":  # ids and pinned revisions are in the stage's params; a local
        # directory given as an id by its content (as data.files), which no revision pins
        ids = [config["data"]["hub"][k]["id"] for k in sorted(names)]  # all set (hub_specs checked)
        return digest("raw", "hub", *[content(i) for i in ids if os.path.isdir(i)])
    return digest("raw", [content(raw_file(k)) for k in sorted(names)])


def lineage_data():  # pairs and SFT rows (the normalise job): what every training job reads
    return digest("data", lineage_raw("data"), NORMALISE_PARAMS, code("cmd_normalise"))


def lineage_eval():  # the eval prompts (the eval_prompts job): what generation, scoring and the judge read
    return digest("eval_prompts", lineage_raw("eval"), EVAL_PROMPTS_PARAMS, code("cmd_eval_prompts"))


def lineage_base():
    if BASE_GGUF:  # converted from the file alone; a new or edited file re-converts (by content, as data.files)
        return digest("base", BASE_PARAMS, code("cmd_base_gguf"), content(BASE_GGUF))
    return digest("base", lineage_data(), BASE_PARAMS, code("cmd_base"), local_model(BASE_PARAMS["name_or_path"]))


def lineage_oracle_base():
    return digest("oracle_base", lineage_data(), ORACLE_BASE_PARAMS, code("cmd_base"),
                  local_model(ORACLE_BASE_PARAMS["name_or_path"]))


def lineage_split():
    oracle_base = [lineage_oracle_base()] if ORACLE_BASE else []
    return digest("split", lineage_data(), lineage_base(), *oracle_base, SPLIT_PARAMS, code("cmd_split"))


def lineage_sft():
    return digest("sft", lineage_base(), lineage_data(), train_params("sft"), code("cmd_train"))


def lineage_oracle():
    init = lineage_oracle_base() if ORACLE_BASE else lineage_sft()
    return digest("oracle", init, lineage_split(), oracle_params(), code("cmd_train"))


def lineage_rm(member):
    return digest("rm", lineage_sft(), lineage_split(), member_params(member), code("cmd_train"))


def lineage_table(name):
    if name == "gold_rewards":
        return digest(name, lineage_split(), GOLD, code("cmd_gold_table"))
    models = {"oracle_rewards": [lineage_oracle()], "reference_logps": [lineage_sft()],
              "ensemble_rewards": [lineage_rm(m) for m in MEMBERS]}[name]
    return digest(name, lineage_split(), models, TABLE_PARAMS, code("cmd_table"))


def lineage_policy(policy):
    if policy == "sft":
        return lineage_sft()
    method = policy.split("-")[0]
    return digest("align", policy, lineage_sft(), lineage_split(), [lineage_table(t) for t in METHOD_TABLES[method]],
                  align_params(method), code("cmd_train"))


def lineage_generations(policy):
    return digest("generate", lineage_policy(policy), lineage_eval(), GENERATE_PARAMS, code("cmd_generate"))


def lineage_scores(policy):
    upstream = lineage_eval() if policy == "reference" else lineage_generations(policy)
    return digest("score", policy, upstream, lineage_oracle(), SCORE_PARAMS, code("cmd_score"))


def lineage_of(path):
    """Lineage of an artifact of this config, by its path (for the aggregates' checks)."""
    name = Path(path).stem if Path(path).suffix else Path(path).name
    parent = Path(path).parent.name
    if str(path) == JUDGE_VERDICTS:
        return lineage_judge()
    if parent == "scores":
        return lineage_scores(name)
    if parent == "generations":
        return lineage_generations(name)
    if parent == "tables":
        return lineage_table(name)
    if name == "oracle":
        return lineage_oracle()
    if name.startswith("rm"):
        return lineage_rm(name[2:])
    return lineage_policy(name)


def expected_lineage(wildcards, input):
    """JSON {input path: lineage} an aggregate checks its inputs' provenance against."""
    return as_json({str(f): lineage_of(f) for f in input})


# ---------------------------------------------------------------- figures (rule `figures`)
CURVE_GROUPS = SPLITS + ["world"]


def oracle_init(wildcards):
    """The Oracle starts from the policy's SFT, or from its own base model (oracle.base)."""
    return f"{UP}/models/oracle_base" if ORACLE_BASE else f"{UP}/models/sft"


def curve_models(wildcards):
    """The aligned policies of one split, or the world's models (SFT, Oracle, ensemble if trained)."""
    if wildcards.group == "world":
        return [f"{UP}/models/sft", f"{UP}/models/oracle"] + [f"{UP}/models/rm{m}" for m in TRAINED_MEMBERS]
    return [f"{OUT}/models/{m}-{wildcards.group}" for m in METHODS]

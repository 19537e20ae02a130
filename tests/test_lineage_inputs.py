"""What the workflow's lineage tracks about inputs named by path: data.files, a local model or
Oracle directory and a GGUF file by their content (cached, so a no-op parse reads no file again);
and each training job's own resume folder under a shared resume_dir (a study)."""

import copy
import inspect
import json
import os
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def _params(workdir: Path, config: dict, rules: tuple[str, ...], snakefile: Path = REPO / "Snakefile",
            configfiles: tuple[Path, ...] = ()) -> dict:
    """Parse the workflow (Snakemake's Python API) in ``workdir``; each named rule's params.
    ``_workflow`` is the API's parsed workflow (not public)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings()) as api:
            parsed = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=snakefile, workdir=workdir,
                                  config_settings=ConfigSettings(
                                      config=config, configfiles=[REPO / "config" / "config.yaml", *configfiles]))
            wf = parsed._workflow
            names = [r.name for r in wf.rules]
            return {n: wf.get_rule(n).params for n in names if n in rules or n.split("_", 1)[-1] in rules}
    finally:
        os.chdir(cwd)


def _files_config(workdir: Path) -> dict:
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    for name in ("comparisons.jsonl", "sft.jsonl", "news.jsonl"):
        shutil.copy2(FIXTURES / name, data / name)
    return {"out_dir": "results/files", "winrates": {"scorers": ["oracle"]},
            "data": {"source": "files", "files": {"comparisons": "data/comparisons.jsonl", "sft_train": "data/sft.jsonl",
                                                  "sft_test": "data/sft.jsonl", "news": "data/news.jsonl"}}}


def _same_size_edit(path: Path) -> None:
    """Change a file's content, keeping its size and modification time (as a tool that copies
    times, or an edit within one second on a coarse file system, would)."""
    st = path.stat()
    text = path.read_bytes()
    i = text.index(b"a")
    path.write_bytes(text[:i] + b"e" + text[i + 1:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_data_files_are_tracked_by_content_not_by_time(tmp_path):
    config = _files_config(tmp_path)
    rules = ("normalise", "eval_prompts")
    lineage = lambda rule: str(_params(tmp_path, config, rules)[rule].lineage)  # noqa: E731
    before = {rule: lineage(rule) for rule in rules}
    news = tmp_path / "data" / "news.jsonl"
    _same_size_edit(news)
    edited = lineage("eval_prompts")
    assert edited != before["eval_prompts"]
    assert lineage("normalise") == before["normalise"]  # an eval source: no training data changed
    os.utime(news)  # touched: same content
    assert lineage("eval_prompts") == edited
    _same_size_edit(tmp_path / "data" / "comparisons.jsonl")
    assert lineage("normalise") != before["normalise"] and lineage("eval_prompts") == edited
    assert (tmp_path / ".snakemake" / "drdo" / "content_hashes.json").is_file()  # the cache, beside Snakemake's


def test_content_cache_is_used_and_checked(tmp_path):
    from drdo import contenthash

    f = tmp_path / "x.bin"
    f.write_bytes(b"one")
    cache = tmp_path / "cache.json"
    hashes = contenthash.ContentHashes(cache)
    first = hashes.tree(f)
    hashes.save()
    entry = contenthash.ContentHashes(cache).entries[str(f)]
    assert entry[-1] == first and entry[:4] == [3, f.stat().st_mtime_ns, f.stat().st_ctime_ns, f.stat().st_ino]
    # an entry whose stamp matches is trusted (not read again): a no-op parse costs a stat per file
    stale = contenthash.ContentHashes(cache)
    stale.entries[str(f)][4] = "cached"
    assert stale.tree(f) == "cached"
    f.write_bytes(b"two")  # a write changes the stamp: hashed again
    assert contenthash.ContentHashes(cache).tree(f) not in (first, "cached")


def test_a_local_model_or_oracle_directory_is_tracked_by_content(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    (model / "model.safetensors").write_bytes(b"weights-a")
    oracle = tmp_path / "my-oracle"
    shutil.copytree(model, oracle)
    config = {**_files_config(tmp_path), "model": {"name_or_path": str(model)}, "oracle": {"base": str(oracle)}}
    rules = ("base_model", "oracle_base")

    def lineages():
        params = _params(tmp_path, config, rules)
        return str(params["base_model"].lineage), str(params["oracle_base"].lineage)

    base, oracle_base = lineages()
    _same_size_edit(model / "config.json")
    assert lineages() == (lineages()[0], oracle_base) and lineages()[0] != base
    (oracle / "model.safetensors").write_bytes(b"weights-b")  # new weights under the same path
    assert lineages()[1] != oracle_base


def test_a_gguf_base_file_is_tracked_by_content(tmp_path):
    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    config = {"out_dir": "results/gguf", "model": {"name_or_path": str(gguf)}}
    lineage = lambda: str(_params(tmp_path, config, ("base_model",))["base_model"].lineage)  # noqa: E731
    before = lineage()
    st = gguf.stat()
    gguf.write_bytes(b"GGUF" + b"\1" * 64)
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert lineage() != before


def _resume_folder(params, wildcards=None) -> str:
    """The folder of a training rule's ``--resume <folder> --save-every N`` (a param of the job's output)."""
    args = shlex.split(params.resume(wildcards, output=None))
    assert args[0] == "--resume" and args[2] == "--save-every" and int(args[3]) >= 0
    return args[1]


@pytest.mark.parametrize("resume_dir", [None, "scratch/resume"])
def test_each_training_job_of_a_study_has_its_own_resume_folder(tmp_path, resume_dir):
    study = yaml.safe_load((REPO / "tests" / "configs" / "study-e2e.yaml").read_text())
    study["seeds"]["world"] = [0, 1]  # two worlds, two runs each
    study["config"]["resume_dir"] = resume_dir
    study["configfiles"] = [str(REPO / f) for f in study["configfiles"]]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    params = _params(tmp_path, {"study": str(tmp_path / "study.yaml")}, ("sft", "oracle", "reward_model", "align"),
                     snakefile=REPO / "workflow" / "study.smk")
    folders = []
    for name, p in params.items():
        jobs = {"reward_model": [SimpleNamespace(member=str(m)) for m in range(2)],
                "align": [SimpleNamespace(method=m, split="all") for m in ("drdo", "dpo", "edpo")]}
        for wildcards in jobs.get(name.split("_", 1)[1], [None]):
            folders.append(_resume_folder(p, wildcards))
    assert len(folders) == 2 * (1 + 1 + 2) + 4 * 3  # 2 worlds x (sft, oracle, 2 members); 4 runs x 3 methods
    assert len(set(folders)) == len(folders), sorted(folders)
    if resume_dir:
        assert all(f.startswith(resume_dir + "/") for f in folders)


def test_an_absolute_out_dir_keeps_its_resume_state_under_resume_dir(tmp_path):
    out_dir = str(tmp_path / "abs-results")
    params = _params(tmp_path, {**_files_config(tmp_path), "out_dir": out_dir, "resume_dir": "scratch/resume"}, ("sft",))
    assert _resume_folder(params["sft"]) == f"scratch/resume/_abs_{out_dir}/sft"  # not {out_dir}/sft


# --------------------------------------------------------------------------- what a job's params compare
def _compared(params) -> dict:
    """A rule's params as Snakemake compares them to decide a re-run: without those that are
    functions of the job's output (or input, threads, resources), which it counts as derived."""
    derived = lambda v: callable(v) and {"input", "output", "threads", "resources"} & set(inspect.signature(v).parameters)  # noqa: E731
    return {name: str(value) for name, value in params.items() if not derived(value)}


JUDGE = {"enabled": True, "api_key_env": None, "temperatures": [0.9], "splits": ["all"], "comparisons": [["drdo", "dpo"]]}


def test_the_served_judge_model_is_tracked_by_content(tmp_path):
    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    config = {"out_dir": "results/judge", "judge": {**JUDGE, "serve": {"gguf": str(gguf), "threads": 1, "n_ctx": 2048,
                                                                         "parallel": 1}}}
    lineage = lambda: str(_params(tmp_path, config, ("judge",))["judge"].lineage)  # noqa: E731
    before = lineage()
    st = gguf.stat()
    gguf.write_bytes(b"GGUF" + b"\1" * 64)  # new weights, same size and time
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert lineage() != before


def test_a_served_judge_model_that_is_missing_is_named_before_any_job(tmp_path):
    config = {"judge": {**JUDGE, "serve": {"gguf": str(tmp_path / "none.gguf"), "threads": 1, "n_ctx": 2048, "parallel": 1}}}
    with pytest.raises(Exception, match=r"config key judge\.serve\.gguf: .*none\.gguf does not exist"):
        _params(tmp_path, config, ("judge",))


@pytest.mark.parametrize("run_control", [{"max_usd": 3.5}, {"max_requests": 10}, {"max_concurrency": 2},
                                         {"timeout_s": 5.0}, {"max_retries": 0}, {"serve": {"threads": 3}}])
def test_judge_run_control_keys_rerun_nothing_but_reach_the_job(tmp_path, run_control):
    """Spend limits, concurrency, timeouts, retries and the server's threads decide how the judge job
    runs, not its verdicts: out of the params Snakemake compares (and the lineage), still passed."""
    serve = {"gguf": "smollm2", "threads": 1, "n_ctx": 2048, "parallel": 1}
    base = {"out_dir": "results/judge", "judge": {**JUDGE, "serve": serve}}
    changed = copy.deepcopy(base)
    key, value = next(iter(run_control.items()))
    changed["judge"][key] = {**serve, **value} if key == "serve" else value
    before, after = (_params(tmp_path, c, ("judge",))["judge"] for c in (base, changed))
    assert _compared(after) == _compared(before)
    job = json.loads(after.cfg(None, output=None))
    assert (job["serve"]["threads"] == 3) if key == "serve" else (job[key] == value)
    # what the verdicts depend on still re-runs the judge
    other = copy.deepcopy(base)
    other["judge"]["temperature"] = 0.3
    assert _compared(_params(tmp_path, other, ("judge",))["judge"]) != _compared(before)


def test_a_local_hub_dataset_directory_is_tracked_by_content(tmp_path):
    local = tmp_path / "my-comparisons"
    local.mkdir()
    (local / "train.jsonl").write_text('{"info": {"post": "a post"}}\n')
    hub = {name: {"id": f"org/{name}", "split": "test", "revision": "0" * 40} for name in ("sft_train", "sft_test", "news")}
    config = {"out_dir": "results/hub", "winrates": {"scorers": ["oracle"]},
              "data": {"source": "hub", "hub": {**hub, "comparisons": {"id": "my-comparisons", "split": "train",
                                                                         "revision": "main"}}}}
    lineage = lambda: str(_params(tmp_path, config, ("normalise",))["normalise"].lineage)  # noqa: E731
    before = lineage()
    _same_size_edit(local / "train.jsonl")
    assert lineage() != before


def test_a_gguf_base_depends_on_no_tiny_model_key(tmp_path):
    """A GGUF base model reads its file, model.dtype and the prompt format; the tiny model's keys
    (seed, vocab_size, tiny) change nothing it makes."""
    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    config = {"out_dir": "results/gguf", "model": {"name_or_path": str(gguf)}}
    params = lambda model: _compared(_params(tmp_path, {**config, "model": {**config["model"], **model}},  # noqa: E731
                                             ("base_model",))["base_model"])
    before = params({})
    assert params({"seed": 7, "vocab_size": 999, "tiny": {"hidden_size": 8}}) == before
    assert params({"dtype": "bfloat16"}) != before


def test_split_seed_counts_only_with_a_validation_sample(tmp_path):
    """split.seed draws the max_validation sample: without one the split job does not read it."""
    def compared(split):
        return _compared(_params(tmp_path, {"split": split}, ("split",))["split"])

    assert compared({"seed": 5}) == compared({"seed": 0})
    assert compared({"max_validation": 10, "seed": 5}) != compared({"max_validation": 10, "seed": 0})

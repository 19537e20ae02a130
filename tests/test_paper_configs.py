"""The paper's configs, checked by a dry run: the DAG they would run, without a hub or a model.

A dry run parses the Snakefile and plans jobs; nothing may load a dataset or a model there
(the hub address points at a closed local port, so any attempt would fail the run).
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from test_workflow import planned_jobs

REPO = Path(__file__).resolve().parents[1]


def dry_run(workdir: Path, configfile: Path, target: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "-n", "-p", "--configfile", str(configfile), "--", target]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_paper_tldr_dry_run(tmp_path):
    cfg = REPO / "config" / "paper-tldr.yaml"
    out = yaml.safe_load(cfg.read_text())["out_dir"]
    proc = dry_run(tmp_path, cfg, f"{out}/winrates.csv")
    jobs = planned_jobs(proc)
    assert jobs == {"normalise": 1, "eval_prompts": 1, "base_model": 1, "split": 1, "sft": 1, "oracle": 1, "reward_model": 3,
                    "oracle_table": 1, "ensemble_table": 1, "reference_table": 1, "align": 9, "generate": 10,
                    "score_policy": 10, "score_reference": 1, "judge": 1, "winrates": 1, "validation_report": 1}
    text = proc.stdout + proc.stderr
    # Table 1: GPT-4o on 1,000 CNN/DM articles, DRDO vs e-DPO / DPO and "Gold vs X", every split
    (judge,) = _stage_lines(text, "judge")
    for name in ('"model": "gpt-4o-2024-08-06"', '"eval_sets": ["news"]', '"n_prompts": 1000',
                 '"splits": ["all", "hc_he", "lc_le"]', '["reference", "drdo"]', '["drdo", "edpo"]'):
        assert name in judge
    # the data jobs read the pinned hub datasets, no local raw file: normalise the training data,
    # eval-prompts the eval sets (and only they read the eval sample sizes)
    (normalise,) = _stage_lines(text, "normalise")
    for name in ("openai/summarize_from_feedback", "refs/convert/parquet", "CarperAI/openai_summarize_tldr"):
        assert name in normalise
    assert "abisee/cnn_dailymail" not in normalise and "n_news" not in normalise and "sft_test" not in normalise
    (eval_prompts,) = _stage_lines(text, "eval-prompts")
    for name in ('"sft_test": {"id": "CarperAI/openai_summarize_tldr"', "abisee/cnn_dailymail", "3.0.0",
                 '"n_news": 1000', '"n_tldr": 1000'):
        assert name in eval_prompts
    assert "summarize_from_feedback" not in eval_prompts and "sft_train" not in eval_prompts
    assert "--comparisons" not in normalise + eval_prompts and "raw/" not in text
    # Table 6 lengths reach every tokenising stage; no gold reward on real data
    for stage in ("generate", "score", "table", "train", "split"):
        line = next(line for line in text.splitlines() if "python -m drdo" in line and f" {stage} " in line)
        assert '"max_prompt_length": 512' in line and '"chat_template": true' in line, line
    assert not [line for line in text.splitlines() if " score " in line and '"gold"' in line]
    # the paper's compute: training on 2 GPUs under DeepSpeed ZeRO-2 in bf16, inference on 1
    train = [line for line in text.splitlines() if "drdo.launch" in line and " train " in line]
    assert len(train) == 1 + 1 + 3 + 9
    assert all("--processes 2" in line and '"zero_optimization": {' in line and '"stage": 2' in line
               and '"dtype": "bfloat16"' in line and '"gradient_checkpointing": true' in line
               and '"save_dtype": "bfloat16"' in line for line in train)
    assert all("--processes 1" in line for line in text.splitlines()
               if "drdo.launch" in line and (" generate " in line or " score " in line or " table " in line))
    assert _train_lengths(text) == PAPER_LENGTHS
    assert not (tmp_path / out).exists()


def _stage_lines(text: str, stage: str) -> list[str]:
    return [line for line in text.splitlines() if "python -m drdo" in line and f" {stage} " in line]


def _train_lengths(text: str) -> dict[str, tuple[str, str]]:
    """(epochs, max_steps) of each training objective's jobs (they agree within an objective)."""
    lengths = {}
    for line in _stage_lines(text, "train"):
        objective = re.search(r"--objective (\w+)", line).group(1)
        found = (re.search(r'"epochs": ([\d.]+)', line).group(1), re.search(r'"max_steps": (\d+)', line).group(1))
        assert lengths.setdefault(objective, found) == found, line
    return lengths


# the paper's lengths: SFT, the Oracle and the reward models one epoch (the embedded default's
# sft.max_steps must not leak in), the policies "1k steps"
PAPER_LENGTHS = {"sft": ("1.0", "0"), "oracle": ("1.0", "0"), "rm": ("1.0", "0"),
                 "drdo": ("1.0", "1000"), "dpo": ("1.0", "1000"), "edpo": ("1.0", "1000")}


def test_paper_ultrafeedback_dry_run(tmp_path):
    cfg = REPO / "config" / "paper-ultrafeedback.yaml"
    out = yaml.safe_load(cfg.read_text())["out_dir"]
    proc = dry_run(tmp_path, cfg, f"{out}/winrates.csv")
    # split `all` only: 3 policies + SFT generated and scored; the Oracle on its own base model;
    # the GPT-4 Turbo judge on AlpacaEval (no call in a dry run, no key needed)
    assert planned_jobs(proc) == {"normalise": 1, "eval_prompts": 1, "base_model": 1, "oracle_base": 1, "split": 1, "sft": 1,
                                  "oracle": 1, "reward_model": 3, "oracle_table": 1, "ensemble_table": 1,
                                  "reference_table": 1, "align": 3, "generate": 4, "score_policy": 4,
                                  "score_reference": 1, "judge": 1, "winrates": 1, "validation_report": 1}
    text = proc.stdout + proc.stderr
    # the held-out prompts are carved from the preferences by data.holdout: both data jobs read them
    (normalise,) = _stage_lines(text, "normalise")
    for name in ("argilla/ultrafeedback-binarized-preferences-cleaned", '"task": "ultrafeedback"', '"holdout": {'):
        assert name in normalise
    assert "alpaca_eval" not in normalise and "n_ultrafeedback" not in normalise
    (eval_prompts,) = _stage_lines(text, "eval-prompts")
    for name in ("argilla/ultrafeedback-binarized-preferences-cleaned", "tatsu-lab/alpaca_eval",
                 "refs/convert/parquet", "alpaca_eval/eval/*.parquet", '"task": "ultrafeedback"', '"holdout": {',
                 '"n_alpaca_eval": 805', '"n_ultrafeedback": 1000'):
        assert name in eval_prompts
    assert "raw/" not in text
    # the policy is OPT-1.3B, the Oracle starts from its own OPT-1.3B, both with the template file's content
    (base,) = [line for line in _stage_lines(text, "base") if "--out results/paper-ultrafeedback/models/base " in line]
    (oracle_base,) = [line for line in _stage_lines(text, "base") if "models/oracle_base " in line]
    template = json.dumps((REPO / "config" / "chat_templates" / "user_assistant.jinja").read_text())
    for line in (base, oracle_base):
        assert '"name_or_path": "facebook/opt-1.3b"' in line and template.replace("'", "'\"'\"'") in line
    oracle = next(line for line in _stage_lines(text, "train") if "--objective oracle" in line)
    assert "--init results/paper-ultrafeedback/models/oracle_base" in oracle
    (split,) = _stage_lines(text, "split")
    assert "--oracle-base results/paper-ultrafeedback/models/oracle_base" in split
    for stage in ("generate", "score", "table", "train", "split"):
        assert all('"max_prompt_length": 512' in line and '"chat_template": true' in line
                   for line in _stage_lines(text, stage)), stage
    # Table 2: four temperatures; Table 3: the instruction prompt on AlpacaEval only
    generate = _stage_lines(text, "generate")
    assert len(generate) == 4 and all('"temperatures": [0.2, 0.5, 0.7, 0.9]' in line for line in generate)
    (judge,) = _stage_lines(text, "judge")
    for name in ('"model": "gpt-4-turbo-2024-04-09"', '"eval_sets": ["alpaca_eval"]',
                 '"instruction_sets": ["alpaca_eval"]', '"n_prompts": 805'):
        assert name in judge
    assert not [line for line in text.splitlines() if " score " in line and '"gold"' in line]
    assert _train_lengths(text) == PAPER_LENGTHS
    assert not (tmp_path / out).exists()


def test_paper_ultrafeedback_study_dry_run(tmp_path):
    """Table 2's other policies: one world per policy, each with its own OPT-1.3B Oracle."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    study = REPO / "config" / "studies" / "paper-ultrafeedback.yaml"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "study.smk"), "--directory", str(tmp_path),
           "--cores", "2", "-n", "-p", "--config", f"study={study}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {}
    for rule, n in planned_jobs(proc).items():
        name = rule.split("_", 1)[1] if rule[0] in "wr" and rule.split("_", 1)[0][1:].isdigit() else rule
        jobs[name] = jobs.get(name, 0) + n
    per_world = {"normalise": 1, "eval_prompts": 1, "base_model": 1, "oracle_base": 1, "split": 1, "sft": 1, "oracle": 1,
                 "reward_model": 3, "oracle_table": 1, "ensemble_table": 1, "reference_table": 1, "score_reference": 1}
    assert {k: jobs[k] for k in per_world} == {k: 5 * n for k, n in per_world.items()}
    assert jobs["align"] == 5 * 3 and jobs["generate"] == jobs["score_policy"] == 5 * 4  # 3 policies + SFT each
    assert "judge" not in jobs and jobs["study_table"] == 1 and jobs["study_figures"] == 1  # Oracle figure only
    text = proc.stdout + proc.stderr
    policies = {"facebook/opt-125m", "facebook/opt-350m", "facebook/opt-1.3b", "facebook/opt-2.7b",
                "microsoft/Phi-3-mini-4k-instruct"}
    bases = [line for line in _stage_lines(text, "base") if "/oracle_base " not in line + " "]
    found = {p for p in policies for line in bases if f'"name_or_path": "{p}"' in line and "/models/base " in line + " "}
    assert found == policies
    oracle_bases = [line for line in _stage_lines(text, "base") if "/models/oracle_base" in line]
    assert len(oracle_bases) == 5 and all('"name_or_path": "facebook/opt-1.3b"' in line for line in oracle_bases)

"""Studies (workflow/study.smk, drdo.study) and the report's figures (drdo.plots, rule `figures`)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drdo import io, study, winrates

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tests" / "configs" / "study-e2e.yaml"
ROOT = "results/study-e2e"


# --------------------------------------------------------------------------- aggregation (fast)
def _scores(policy, split, oracle, gold, temps=(0.7,)):
    rows = []
    for t in temps:
        for i, (o, g) in enumerate(zip(oracle, gold)):
            rows.append({"eval_set": "tldr", "prompt_id": i, "temperature": np.nan if policy == "reference" else t,
                         "response": "x", "policy": policy, "split": split, "oracle": o, "gold": g})
    return pd.DataFrame(rows)


def test_run_outcomes_count_ties_half_and_disagreement():
    scores = pd.concat([
        _scores("sft", "-", [0, 0, 0, 0], [0, 0, 0, 0]),
        _scores("reference", "-", [9, 9, 9, 9], [9, 9, 9, 9]),
        _scores("drdo", "all", [1, 1, 0, -1], [1, -1, 0, 0]),   # oracle: W W T L ; gold: W L T T
        _scores("dpo", "all", [0, 0, 0, 0], [0, 0, 0, 0]),
    ], ignore_index=True)
    o = study.run_outcomes(scores, ["drdo", "dpo"], ["all"], ["oracle", "gold"])
    d = o[(o["policy_a"] == "drdo") & (o["policy_b"] == "dpo")].sort_values("prompt_id")
    assert d["oracle"].tolist() == [1, 1, 0.5, 0] and d["gold"].tolist() == [1, 0, 0.5, 0.5]
    assert d["disagreement"].tolist() == [0, 1, 0, 0.5]
    assert set(zip(o["policy_a"], o["policy_b"])) == {("drdo", "dpo"), ("drdo", "sft"), ("dpo", "sft"),
                                                      ("reference", "drdo"), ("reference", "dpo")}



def test_unscorable_prompts_are_left_out_as_winrates_does(tmp_path):
    """A response too long to score (NaN) drops the prompt from that scorer's measures only."""
    nan = float("nan")
    files = {}
    for name, df in {"sft": _scores("sft", "-", [0] * 4, [0] * 4),
                     "reference": _scores("reference", "-", [9] * 4, [9] * 4),
                     "drdo-all": _scores("drdo", "all", [1, nan, 1, -1], [1, 1, 1, -1]),
                     "dpo-all": _scores("dpo", "all", [0] * 4, [0] * 4)}.items():
        files[name] = str(tmp_path / f"{name}.parquet")
        io.write_parquet(df, files[name], {"stage": "test"})
    runs = [{"variant": "default", "levels": {}, "world_seed": 0, "train_seed": 0, "world": "s0", "scores": files}]
    params = {"name": "t", "factors": {"gamma": {"key": "align.drdo.gamma", "default": 2.0}}, "splits": ["all"],
              "methods": ["drdo", "dpo"],
              "scorers": ["oracle", "gold"], "n_boot": 50, "seed": 0}
    _, per_run = study.aggregate(runs, params)
    sel = per_run[(per_run["policy_a"] == "drdo") & (per_run["policy_b"] == "dpo")].set_index("measure")
    by_scorer = sel[sel.index == "win_rate"].set_index("scorer")
    assert by_scorer.loc["oracle", "n_prompts"] == 3 and by_scorer.loc["oracle", "value"] == 2 / 3
    assert by_scorer.loc["gold", "n_prompts"] == 4 and by_scorer.loc["gold", "value"] == 0.75
    assert sel.loc["disagreement", "n_prompts"] == 3
    scores = pd.concat([io.read_parquet(f) for f in files.values()], ignore_index=True)
    wr = winrates.winrate_table(scores, ["all"], ["drdo", "dpo"], ["oracle", "gold"], 50, 0)
    row = wr[(wr["policy_a"] == "drdo") & (wr["policy_b"] == "dpo") & (wr["scorer"] == "oracle")].iloc[0]
    assert row["n"] == 3 and row["win_rate"] == 2 / 3  # the same rule as winrates.csv

def test_two_level_interval_widens_with_seed_variance():
    rng = np.random.default_rng(0)
    same = [np.r_[np.ones(30), np.zeros(70)] for _ in range(3)]  # three seeds, all at 0.3
    spread = [np.r_[np.ones(k), np.zeros(100 - k)] for k in (10, 30, 50)]  # seeds at 0.1, 0.3, 0.5
    lo1, hi1 = study.two_level_interval(same, 2000, rng)
    lo2, hi2 = study.two_level_interval(spread, 2000, rng)
    assert lo1 < 0.3 < hi1 and hi1 - lo1 < 0.15  # prompt noise only
    assert lo2 < 0.3 < hi2 and hi2 - lo2 > 0.25  # seeds disagree: much wider
    ragged = [np.r_[np.ones(5), np.zeros(5)], np.r_[np.ones(20), np.zeros(20)]]
    lo3, hi3 = study.two_level_interval(ragged, 500, rng)
    assert 0 <= lo3 <= 0.5 <= hi3 <= 1


def test_aggregate_rows_per_factor_level(tmp_path):
    files = {}
    for name, df in {"sft": _scores("sft", "-", [0] * 4, [0] * 4),
                     "reference": _scores("reference", "-", [9] * 4, [9] * 4),
                     "drdo-all": _scores("drdo", "all", [1, 1, 1, -1], [1, -1, -1, -1]),
                     "drdo-g0": _scores("drdo", "all", [1, 1, 1, 1], [1, 1, 1, 1]),
                     "dpo-all": _scores("dpo", "all", [0] * 4, [0] * 4)}.items():
        files[name] = str(tmp_path / f"{name}.parquet")
        io.write_parquet(df, files[name], {"stage": "test"})
    base = {p: files[p] for p in ("sft", "reference", "drdo-all", "dpo-all")}
    runs = [{"variant": "default", "levels": {}, "world_seed": s, "train_seed": 0, "world": f"s{s}", "scores": base}
            for s in (0, 1)]
    runs += [{"variant": "gamma=0.0", "levels": {"gamma": 0.0}, "world_seed": s, "train_seed": 0, "world": f"s{s}",
              "scores": {**base, "drdo-all": files["drdo-g0"]}} for s in (0, 1)]
    params = {"name": "t", "factors": {"gamma": {"key": "align.drdo.gamma", "default": 2.0}}, "splits": ["all"],
              "methods": ["drdo", "dpo"], "scorers": ["oracle", "gold"], "n_boot": 200, "seed": 0}
    table, per_run = study.aggregate(runs, params)
    assert list(table.columns) == study.COLUMNS
    sel = table[(table["policy_a"] == "drdo") & (table["policy_b"] == "dpo")].set_index(["level", "measure", "scorer"])
    assert sel.loc[("2.0", "win_rate", "gold"), "mean"] == 0.25 and sel.loc[("2.0", "win_rate", "oracle"), "mean"] == 0.75
    assert sel.loc[("2.0", "disagreement", "oracle_vs_gold"), "mean"] == 0.5
    assert sel.loc[("0.0", "win_rate", "gold"), "mean"] == 1.0 and bool(sel.loc[("2.0", "win_rate", "gold"), "is_default"])
    assert (table["n_seeds"] == 2).all() and ((table["ci_low"] <= table["mean"]) & (table["mean"] <= table["ci_high"])).all()
    assert len(per_run) == 2 * len(table)  # two seeds behind every row


# --------------------------------------------------------------------------- workflow (e2e)
def snakemake(workdir: Path, *args: str, snakefile: str = "workflow/study.smk", configs=()):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / snakefile), "--directory", str(workdir),
           "--cores", "2", *args]
    if configs:
        cmd += ["--configfile", *configs]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned(proc) -> dict[str, int]:
    from test_workflow import planned_jobs
    return planned_jobs(proc)


@pytest.mark.e2e
def test_study_shares_upstream_jobs_aggregates_and_reports(tmp_path):
    config = ["--config", f"study={STUDY}"]
    jobs = planned(snakemake(tmp_path, "-n", *config))
    # one world for the two runs: every upstream job once
    assert jobs["w0_sft"] == 1 and jobs["w0_oracle"] == 1 and jobs["w0_reward_model"] == 2
    assert jobs["w0_generate"] == 1 and jobs["w0_score_policy"] == 1  # the SFT policy, once
    # the baseline trains the three methods; gamma=0 changes DRDO only, so it trains DRDO alone
    assert jobs["r0_align"] == 3 and jobs["r1_align"] == 1 and sum(v for k, v in jobs.items() if k.endswith("align")) == 4
    assert not any(k.startswith("w1_") or k.startswith("r2_") for k in jobs)

    snakemake(tmp_path, *config)
    table = pd.read_csv(tmp_path / ROOT / "study.csv")
    assert list(table.columns) == study.COLUMNS
    assert set(table["level"].astype(float)) == {0.0, 2.0} and set(table["factor"]) == {"gamma"}
    assert set(table["measure"]) == {"win_rate", "disagreement"} and set(table["split"]) == {"all"}
    wr = table[table["measure"] == "win_rate"]
    assert set(wr["scorer"]) == {"oracle", "gold"} and (table["n_prompts"] == 12).all()
    assert ((table["ci_low"] <= table["mean"] + 1e-9) & (table["mean"] <= table["ci_high"] + 1e-9)).all()
    # DPO and e-DPO of the gamma=0 run are the baseline's: identical values at both levels
    dpo = table[(table["policy_a"] == "dpo") & (table["policy_b"] == "edpo")]
    by_level = {lvl: tuple(g.sort_values(["eval_set", "temperature", "measure", "scorer"])["mean"])
                for lvl, g in dpo.groupby("level")}
    assert len(by_level) == 2 and len(set(by_level.values())) == 1
    for fig in ("gold", "oracle", "disagreement"):
        assert (tmp_path / ROOT / "figures" / f"study_{fig}.png").stat().st_size > 10_000
    assert planned(snakemake(tmp_path, "-n", *config)) == {}

    # The baseline run seen through the main Snakefile (out_dir: the run, upstream_dir: its
    # world) is the same DAG with the same lineage: the study built its figures, nothing is stale.
    run = f"{ROOT}/runs/default/s0-t0"
    (tmp_path / "run.yaml").write_text(f"out_dir: {run}\nupstream_dir: {ROOT}/worlds/s0\nalign: {{splits: [all]}}\n")
    configs = [str(REPO / "tests" / "configs" / "e2e.yaml"), str(tmp_path / "run.yaml")]
    assert (tmp_path / run / "figures" / "curves_world.png").exists()
    assert planned(snakemake(tmp_path, "-n", "figures", snakefile="Snakefile", configs=configs)) == {}
    png = (tmp_path / run / "figures" / "forest_gold.png").read_bytes()
    (tmp_path / run / "figures" / "forest_gold.png").unlink()
    snakemake(tmp_path, "figures", snakefile="Snakefile", configs=configs)
    assert (tmp_path / run / "figures" / "forest_gold.png").read_bytes() == png  # deterministic
    snakemake(tmp_path, "--report", str(tmp_path / "report.html"), "figures", snakefile="Snakefile", configs=configs)
    html = (tmp_path / "report.html").read_text()
    for name in ("curves_all.png", "curves_world.png", "forest_oracle.png", "lengths.png", "table5.csv",
                 "validation.csv"):
        assert name in html, name
    snakemake(tmp_path, "--report", str(tmp_path / "study.html"), *config)
    assert "study_gold.png" in (tmp_path / "study.html").read_text()

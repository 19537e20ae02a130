"""Studies (workflow/study.smk, drdo.study) and the report's figures (drdo.plots, rule `figures`)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from drdo import intervals, io, study, winrates

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tests" / "configs" / "study-e2e.yaml"
ROOT = "results/study-e2e"


# --------------------------------------------------------------------------- aggregation (fast)
def _scores(policy, split, oracle, gold, temps=(0.7,), texts=None, finished=None):
    rows = []
    for t in temps:
        for i, (o, g) in enumerate(zip(oracle, gold)):
            rows.append({"eval_set": "tldr", "prompt_id": i, "temperature": np.nan if policy == "reference" else t,
                         "response": texts[i] if texts else f"{policy} {split} {i} {t}", "policy": policy,
                         "split": split, "oracle": o, "gold": g, "too_long": bool(np.isnan(o)),
                         "finished": finished[i] if finished else True})
    return pd.DataFrame(rows)


PARAMS = {"name": "t", "factors": {"gamma": {"key": "align.drdo.gamma", "default": 2.0}}, "splits": ["all"],
          "methods": ["drdo", "dpo"], "scorers": ["oracle", "gold"], "unfinished": "as_scored", "n_draws": 1000,
          "seed": 0}


def _files(tmp_path, frames):
    files = {}
    for name, df in frames.items():
        files[name] = str(tmp_path / f"{name}.parquet")
        io.write_parquet(df, files[name], {"stage": "test"})
    return files


def test_run_outcomes_count_ties_half_and_disagreement():
    scores = pd.concat([
        _scores("sft", "-", [0, 0, 0, 0], [0, 0, 0, 0]),
        _scores("reference", "-", [9, 9, 9, 9], [9, 9, 9, 9]),
        # oracle: W W T L W ; gold: W L T T W, but prompt 4's two responses are the same text
        _scores("drdo", "all", [1, 1, 0, -1, 1e-6], [1, -1, 0, 0, 0], texts=["a", "b", "c", "d", "same"],
                finished=[True, True, True, False, True]),
        _scores("dpo", "all", [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], texts=["e", "f", "g", "h", "same"]),
    ], ignore_index=True)
    scores = scores[~((scores["policy"].isin(["sft", "reference"])) & (scores["prompt_id"] == 4))]
    scores = pd.concat([scores, _scores("sft", "-", [0] * 5, [0] * 5).tail(1),
                        _scores("reference", "-", [9] * 5, [9] * 5).tail(1)], ignore_index=True)
    o = study.run_outcomes(scores, ["drdo", "dpo"], ["all"], ["oracle", "gold"])
    d = o[(o["policy_a"] == "drdo") & (o["policy_b"] == "dpo")].sort_values("prompt_id")
    assert d["oracle"].tolist() == [1, 1, 0.5, 0, 0.5] and d["gold"].tolist() == [1, 0, 0.5, 0.5, 0.5]
    assert d["disagreement"].tolist() == [0, 1, 0, 0.5, 0]
    assert d["unfinished_a"].tolist() == [False, False, False, True, False] and not d["unfinished_b"].any()
    lost = study.run_outcomes(scores, ["drdo", "dpo"], ["all"], ["oracle", "gold"], unfinished="loss")
    d = lost[(lost["policy_a"] == "drdo") & (lost["policy_b"] == "dpo")].sort_values("prompt_id")
    assert d["oracle"].tolist() == [1, 1, 0.5, 0, 0.5] and d["gold"].tolist() == [1, 0, 0.5, 0, 0.5]
    assert set(zip(o["policy_a"], o["policy_b"])) == {("drdo", "dpo"), ("drdo", "sft"), ("dpo", "sft"),
                                                      ("reference", "drdo"), ("reference", "dpo")}



def test_unscorable_prompts_are_left_out_as_winrates_does(tmp_path):
    """A response too long to score (NaN) drops the prompt from that scorer's measures only."""
    nan = float("nan")
    files = _files(tmp_path, {"sft": _scores("sft", "-", [0] * 4, [0] * 4),
                              "reference": _scores("reference", "-", [9] * 4, [9] * 4),
                              "drdo-all": _scores("drdo", "all", [1, nan, 1, -1], [1, 1, 1, -1]),
                              "dpo-all": _scores("dpo", "all", [0] * 4, [0] * 4)})
    runs = [{"variant": "default", "levels": {}, "world_seed": 0, "train_seed": 0, "world": "s0", "scores": files}]
    _, per_run = study.aggregate(runs, PARAMS)
    sel = per_run[(per_run["policy_a"] == "drdo") & (per_run["policy_b"] == "dpo")].set_index("measure")
    by_scorer = sel[sel.index == "win_rate"].set_index("scorer")
    assert by_scorer.loc["oracle", "n_prompts"] == 3 and by_scorer.loc["oracle", "value"] == 2 / 3
    assert by_scorer.loc["gold", "n_prompts"] == 4 and by_scorer.loc["gold", "value"] == 0.75
    assert sel.loc["disagreement", "n_prompts"] == 3
    scores = pd.concat([io.read_parquet(f) for f in files.values()], ignore_index=True)
    wr = winrates.winrate_table(scores, ["all"], ["drdo", "dpo"], ["oracle", "gold"])
    row = wr[(wr["policy_a"] == "drdo") & (wr["policy_b"] == "dpo") & (wr["scorer"] == "oracle")].iloc[0]
    assert row["n"] == 3 and row["win_rate"] == 2 / 3  # the same rule as winrates.csv
    # a missing score that is not marked too long is an error, not a dropped prompt
    bad = _scores("drdo", "all", [1, nan, 1, -1], [1, 1, 1, -1]).assign(too_long=False)
    runs[0]["scores"] = {**files, **_files(tmp_path, {"drdo-bad": bad})}
    del runs[0]["scores"]["drdo-all"]
    with pytest.raises(ValueError, match=r"drdo-bad\.parquet: row 1 .* has no oracle score"):
        study.aggregate(runs, PARAMS)

def test_interval_follows_the_design():
    """Several worlds: the interval over world means; one world: over its seeds x prompts; one
    run: the score interval of winrates.csv."""
    rng = np.random.default_rng(0)
    y = (rng.random((5, 2, 100)) < np.array([0.1, 0.3, 0.5, 0.2, 0.4])[:, None, None]).astype(float)
    mean, lo, hi, n_worlds = study.interval(y, 1000, 0)
    assert n_worlds == 5 and (mean, lo, hi) == pytest.approx(intervals.world_interval(y, 1000, 0))
    one = study.interval(y[:1], 1000, 0)
    assert one[3] == 1 and one[:3] == pytest.approx(intervals.crossed_interval(y[0]))
    run = study.interval(y[:1, :1], 1000, 0)
    assert run[:3] == pytest.approx((y[0, 0].mean(), *map(float, intervals.score_interval(y[0, 0]))))
    assert run[:3] == pytest.approx((y[0, 0].mean(), *[winrates.outcome_stats(y[0, 0])[k] for k in ("ci_low", "ci_high")]))
    # a world none of whose prompts could be scored is not a world of the estimate
    y[4] = np.nan
    assert study.interval(y, 1000, 0)[3] == 4
    # spread between worlds widens it; the prompts of one world do not make up for that
    agree = np.broadcast_to((rng.random((1, 1, 100)) < 0.3).astype(float), (5, 2, 100))
    assert study.interval(agree, 1000, 0)[2] - study.interval(agree, 1000, 0)[1] < 0.1 < hi - lo


def test_one_world_mean_is_of_the_prompts_its_interval_is_about():
    """Seed 0 scored 40 prompts (30 won), seed 1 only 10 of them (all lost): the crossed interval
    needs prompts every seed scored, and the mean is over the same 10, so it lies inside it."""
    y = np.full((1, 2, 40), np.nan)
    y[0, 0] = np.r_[np.zeros(10), np.ones(30)]
    y[0, 1, :10] = 0.0
    mean, lo, hi, n_worlds = study.interval(y, 1000, 0)
    assert n_worlds == 1 and lo <= mean <= hi
    assert (mean, lo, hi) == pytest.approx(intervals.crossed_interval(y[0, :, :10]))


def test_aggregate_rows_per_factor_level(tmp_path):
    files = _files(tmp_path, {"sft": _scores("sft", "-", [0] * 4, [0] * 4),
                              "reference": _scores("reference", "-", [9] * 4, [9] * 4),
                              "drdo-all": _scores("drdo", "all", [1, 1, 1, -1], [1, -1, -1, -1],
                                                  finished=[True, False, True, True]),
                              "drdo-g0": _scores("drdo", "all", [1, 1, 1, 1], [1, 1, 1, 1]),
                              "dpo-all": _scores("dpo", "all", [0] * 4, [0] * 4)})
    base = {p: files[p] for p in ("sft", "reference", "drdo-all", "dpo-all")}
    runs = [{"variant": "default", "levels": {}, "world_seed": s, "train_seed": 0, "world": f"s{s}", "scores": base}
            for s in (0, 1)]
    runs += [{"variant": "gamma=0.0", "levels": {"gamma": 0.0}, "world_seed": s, "train_seed": 0, "world": f"s{s}",
              "scores": {**base, "drdo-all": files["drdo-g0"]}} for s in (0, 1)]
    table, per_run = study.aggregate(runs, PARAMS)
    assert list(table.columns) == study.COLUMNS
    sel = table[(table["policy_a"] == "drdo") & (table["policy_b"] == "dpo")].set_index(["level", "measure", "scorer"])
    assert sel.loc[("2.0", "win_rate", "gold"), "mean"] == 0.25 and sel.loc[("2.0", "win_rate", "oracle"), "mean"] == 0.75
    assert sel.loc[("2.0", "disagreement", "oracle_vs_gold"), "mean"] == 0.5
    assert sel.loc[("0.0", "win_rate", "gold"), "mean"] == 1.0 and bool(sel.loc[("2.0", "win_rate", "gold"), "is_default"])
    assert (table["n_seeds"] == 2).all() and (table["n_worlds"] == 2).all()
    assert ((table["ci_low"] <= table["mean"]) & (table["mean"] <= table["ci_high"])).all()
    assert len(per_run) == 2 * len(table)  # two seeds behind every row
    assert sel.loc[("2.0", "win_rate", "gold"), "unfinished_a"] == 0.25 and sel.loc[("0.0", "win_rate", "gold"), "unfinished_a"] == 0
    assert (table.loc[table["policy_b"] != "drdo", "unfinished_b"] == 0).all()
    # the per-prompt outcomes give the same table without the score files
    allp = study.collect(runs, PARAMS)
    assert list(allp.columns) == study.OUTCOME_KEY + ["oracle", "gold", "disagreement", "unfinished_a", "unfinished_b"]
    again, _ = study.aggregate([{**r, "scores": {}} for r in runs], PARAMS, allp)
    pd.testing.assert_frame_equal(again, table)


def test_cli_keeps_the_outcomes_and_recomputes_from_them(tmp_path):
    files = _files(tmp_path, {"sft": _scores("sft", "-", [0] * 4, [0] * 4),
                              "reference": _scores("reference", "-", [9] * 4, [9] * 4),
                              "drdo-all": _scores("drdo", "all", [1, 1, 1, -1], [1, -1, -1, -1]),
                              "dpo-all": _scores("dpo", "all", [0] * 4, [0] * 4)})
    runs = [{"variant": "default", "levels": {}, "world_seed": s, "train_seed": 0, "world": f"s{s}", "scores": files}
            for s in (0, 1)]
    args = ["--runs", json.dumps(runs), "--params", json.dumps(PARAMS)]
    assert study.main([*args, "--out", str(tmp_path / "a" / "study.csv")]) == 0
    kept = tmp_path / "a" / "study_outcomes.parquet"
    assert pq.ParquetFile(kept).metadata.row_group(0).column(0).compression == "ZSTD"
    assert study.main([*args, "--outcomes", str(kept), "--out", str(tmp_path / "b" / "study.csv")]) == 0
    assert (tmp_path / "a" / "study.csv").read_text() == (tmp_path / "b" / "study.csv").read_text()
    assert not (tmp_path / "b" / "study_outcomes.parquet").exists()
    # the outcomes file alone: the variants, their levels and the parameters come from its provenance
    assert study.main(["--outcomes", str(kept), "--out", str(tmp_path / "c" / "study.csv")]) == 0
    assert (tmp_path / "a" / "study.csv").read_text() == (tmp_path / "c" / "study.csv").read_text()


def _unfinished_runs(tmp_path, drdo_finished=None):
    """Two worlds x two variants whose prompts hold unfinished responses on either side (or both),
    responses too long for the Oracle (on either side, unfinished or not), ties by score on both
    scorers and identical texts (finished, unfinished)."""
    nan = float("nan")  # prompts 0-9; 5 and 6: the same text from both
    drdo_o = [1, 0, nan, nan, 1, 1e-6, 0.2, 0, nan, 0.3]
    drdo_g = [0, 1, 1, 0, 1, 0, 0.5, 1, 0, 0]
    dpo_o = [0, 1, 0, 0, 0, 0, 0.1, 0, nan, 0.1]
    dpo_g = [0, 1, 0, 1, 0, 0, 0.7, 0, 0, 1]
    texts = [f"drdo {i}" for i in range(10)]
    texts[5], texts[6] = "same", "twin"
    dpo_texts = [f"dpo {i}" for i in range(10)]
    dpo_texts[5], dpo_texts[6] = "same", "twin"
    fin_drdo = drdo_finished or [False, True, False, True, False, True, False, True, False, True]
    fin_dpo = [True, False, True, True, False, True, False, False, True, True]
    files = _files(tmp_path, {
        "sft": _scores("sft", "-", [0, 0, 5, 0, nan, 0, 0, 1, 0, 0], [0.25] * 10, temps=(0.7, 1.0),
                       finished=[True, False, True, True, True, False, True, True, True, True]),
        "reference": _scores("reference", "-", [9, nan, 9, 0, 9, 9, 0, 9, 9, 9], [9, 9, 9, 0, 9, 9, 0, 9, 9, 9]),
        "drdo-all": _scores("drdo", "all", drdo_o, drdo_g, temps=(0.7, 1.0), texts=texts,
                            finished=fin_drdo),
        "drdo-g0": _scores("drdo", "all", [1] * 10, [1, 0, 0, 1, 1, 1, 1, 1, 1, 1], temps=(0.7, 1.0),
                           finished=[False, False, True, True, True, True, True, True, True, True]),
        "dpo-all": _scores("dpo", "all", dpo_o, dpo_g, temps=(0.7, 1.0), texts=dpo_texts, finished=fin_dpo)})
    base = {p: files[p] for p in ("sft", "reference", "drdo-all", "dpo-all")}
    runs = [{"variant": "default", "levels": {}, "world_seed": s, "train_seed": 0, "world": f"s{s}", "scores": base}
            for s in (0, 1)]
    runs += [{"variant": "gamma=0.0", "levels": {"gamma": 0.0}, "world_seed": s, "train_seed": 0, "world": f"s{s}",
              "scores": {**base, "drdo-all": files["drdo-g0"]}} for s in (0, 1)]
    return runs


def test_unfinished_rule_recounted_from_as_scored_outcomes(tmp_path):
    """--unfinished loss / drop on as_scored outcomes gives what the score files give under that rule."""
    runs = _unfinished_runs(tmp_path)
    scored = study.collect(runs, PARAMS)
    nan = float("nan")
    for rule, oracle, gold in [
        # identical texts tie (5, 6: unless dropped); too long (2, 3, 8) is NaN unless the rule decides it
        ("as_scored", [1, 0, nan, nan, 1, 0.5, 0.5, 0.5, nan, 1], [0.5, 0.5, 1, 0, 1, 0.5, 0.5, 1, 0.5, 0]),
        ("loss", [0, 1, 0, nan, 0.5, 0.5, 0.5, 1, 0, 1], [0, 1, 0, 0, 0.5, 0.5, 0.5, 1, 0, 0]),
        ("drop", [nan, nan, nan, nan, nan, 0.5, nan, nan, nan, 1], [nan, nan, nan, 0, nan, 0.5, nan, nan, nan, 0]),
    ]:
        params = {**PARAMS, "unfinished": rule}
        direct = study.collect(runs, params)
        again = study.reapply_unfinished(scored, PARAMS["scorers"], "as_scored", rule)
        pd.testing.assert_frame_equal(again, direct)
        d = again[(again["variant"] == "default") & (again["world_seed"] == 0) & (again["policy_a"] == "drdo")
                  & (again["policy_b"] == "dpo") & (again["temperature"] == 0.7)].sort_values("prompt_id")
        np.testing.assert_array_equal(d["oracle"], oracle, err_msg=rule)
        np.testing.assert_array_equal(d["gold"], gold, err_msg=rule)
        np.testing.assert_array_equal(d["disagreement"], np.abs(np.array(oracle) - np.array(gold)), err_msg=rule)
        for c in ("oracle", "gold", "disagreement"):  # every comparison, not only the one spelled out
            assert (again[c].isna() == direct[c].isna()).all()
        if rule != "as_scored":
            assert not again["oracle"].equals(scored["oracle"]) and not again["gold"].equals(scored["gold"])
        # and the tables: from the score files, and from the as_scored outcomes on the command line
        table, _ = study.aggregate(runs, params)
        pd.testing.assert_frame_equal(study.aggregate([{**r, "scores": {}} for r in runs], params, again)[0], table)
        a, b = tmp_path / f"{rule}-files", tmp_path / f"{rule}-outcomes"
        assert study.main(["--runs", json.dumps(runs), "--params", json.dumps(PARAMS), "--unfinished", rule,
                           "--out", str(a / "study.csv")]) == 0
        if rule == "as_scored":
            kept = a / "study_outcomes.parquet"
            plain = (a / "study.csv").read_text()
        assert study.main(["--outcomes", str(kept), "--unfinished", rule, "--out", str(b / "study.csv")]) == 0
        for name in ("study.csv", "study_runs.csv"):
            assert (b / name).read_text() == (a / name).read_text(), (rule, name)
        for made in (a, b):  # the rule is in the tables' provenance
            assert io.read_provenance(made / "study.csv")["config"]["unfinished"] == rule
            assert io.read_provenance(made / "study_runs.csv")["config"]["unfinished"] == rule
        assert ((b / "study.csv").read_text() == plain) == (rule == "as_scored")
    # the same rule is no change at all: the same table and provenance as without --unfinished
    assert study.main(["--outcomes", str(kept), "--out", str(tmp_path / "plain" / "study.csv")]) == 0
    assert (tmp_path / "plain" / "study.csv").read_text() == plain
    assert (io.read_provenance(tmp_path / "plain" / "study.csv")["config"]
            == io.read_provenance(tmp_path / "as_scored-outcomes" / "study.csv")["config"])


def test_unfinished_rule_refuses_what_the_outcomes_cannot_tell(tmp_path):
    runs = _unfinished_runs(tmp_path)
    lost = tmp_path / "loss"
    params = {**PARAMS, "unfinished": "loss"}
    assert study.main(["--runs", json.dumps(runs), "--params", json.dumps(params),
                       "--out", str(lost / "study.csv")]) == 0
    kept = lost / "study_outcomes.parquet"
    for rule in ("as_scored", "drop"):  # the outcomes of the unfinished responses are gone
        with pytest.raises(ValueError, match=rf"{re.escape(str(kept))} .*unfinished='loss'.*'as_scored'"):
            study.main(["--outcomes", str(kept), "--unfinished", rule, "--out", str(tmp_path / rule / "study.csv")])
        assert not (tmp_path / rule / "study.csv").exists()
    assert study.main(["--outcomes", str(kept), "--unfinished", "loss",
                       "--out", str(tmp_path / "same" / "study.csv")]) == 0
    assert (tmp_path / "same" / "study.csv").read_text() == (lost / "study.csv").read_text()
    # one unfinished response whose text is the other's (prompt 6: a tie under every rule) reads
    # like two texts that tie (a loss): loss cannot be recounted, drop can
    runs = _unfinished_runs(tmp_path / "twin", drdo_finished=[True] * 10)
    scored = study.collect(runs, PARAMS)
    with pytest.raises(ValueError, match=r"4 prompts with one unfinished response tie by every scorer"):
        study.reapply_unfinished(scored, PARAMS["scorers"], "as_scored", "loss")
    pd.testing.assert_frame_equal(study.reapply_unfinished(scored, PARAMS["scorers"], "as_scored", "drop"),
                                  study.collect(runs, {**PARAMS, "unfinished": "drop"}))


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


def test_a_factor_on_a_key_a_named_method_overrides_leaves_it_untrained(tmp_path):
    """drdo_mean sets logp_agg itself: a factor on align.drdo.logp_agg retrains DRDO alone, while a
    factor on a key it inherits (gamma) retrains both (the e2e study below)."""
    text = STUDY.read_text().replace("gamma: {key: align.drdo.gamma, levels: [0.0, 2.0]}",
                                     "logp_agg: {key: align.drdo.logp_agg, levels: [sum, mean]}")
    (tmp_path / "study.yaml").write_text(text)
    jobs = planned(snakemake(tmp_path, "-n", "--config", f"study={tmp_path / 'study.yaml'}"))
    assert jobs["r0_align"] == 7 and jobs["r1_align"] == 1


@pytest.mark.e2e
def test_study_shares_upstream_jobs_aggregates_and_reports(tmp_path):
    config = ["--config", f"study={STUDY}"]
    jobs = planned(snakemake(tmp_path, "-n", *config))
    # one world for the two runs: every upstream job once
    assert jobs["w0_sft"] == 1 and jobs["w0_oracle"] == 1 and jobs["w0_reward_model"] == 2
    assert jobs["w0_normalise"] == 1 and jobs["w0_eval_prompts"] == 1  # the runs' generations read its prompts
    assert jobs["w0_generate"] == 1 and jobs["w0_score_policy"] == 1  # the SFT policy, once
    # the baseline trains the seven methods; gamma=0 changes align.drdo only, so it trains DRDO and
    # the named variant that inherits it (drdo_mean) alone
    assert jobs["r0_align"] == 7 and jobs["r1_align"] == 2 and sum(v for k, v in jobs.items() if k.endswith("align")) == 9
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
    # every method, the noise-robust baselines and the named DRDO variant included, against SFT
    methods = ["drdo", "drdo_mean", "dpo", "edpo", "cdpo", "rdpo", "ipo"]
    assert set(table.loc[table["policy_b"] == "sft", "policy_a"]) == set(methods)
    assert (table["n_worlds"] == 1).all() and (table["n_seeds"] == 1).all()
    # with 12 new tokens at most, some responses hit the cap: reported per policy
    assert table["unfinished_b"].between(0, 1).all() and (table["unfinished_b"] > 0).any()
    assert (table.loc[table["policy_a"] == "reference", "unfinished_a"] == 0).all()
    outcomes = pd.read_parquet(tmp_path / ROOT / "study_outcomes.parquet")
    assert list(outcomes.columns) == study.OUTCOME_KEY + ["oracle", "gold", "disagreement", "unfinished_a",
                                                          "unfinished_b"]
    assert len(outcomes) == 2 * len(winrates.comparisons(methods)) * 2 * 2 * 12  # runs x pairs x sets x T x prompts
    wr = pd.read_csv(tmp_path / ROOT / "runs" / "default" / "s0-t0" / "winrates.csv")
    assert list(wr.columns) == winrates.COLUMNS and set(wr["policy_a"]) >= {"cdpo", "rdpo", "ipo", "drdo_mean"}
    # the study's one-run rows are winrates.csv's numbers: the same outcome rules and interval
    keys = ["split", "eval_set", "temperature", "policy_a", "policy_b", "scorer"]
    same = table[(table["variant"] == "default") & (table["measure"] == "win_rate")].merge(wr, on=keys)
    assert len(same) == len(wr) and np.allclose(same["mean"], same["win_rate"], atol=1e-4)
    assert np.allclose(same["ci_low_x"], same["ci_low_y"], atol=1e-4) and np.allclose(same["ci_high_x"], same["ci_high_y"], atol=1e-4)
    assert np.allclose(same["unfinished_a_x"], same["unfinished_a_y"], atol=1e-4)
    for fig in ("gold", "oracle", "disagreement"):
        assert (tmp_path / ROOT / "figures" / f"study_{fig}.png").stat().st_size > 10_000
    assert planned(snakemake(tmp_path, "-n", *config)) == {}

    # The baseline run seen through the main Snakefile (out_dir: the run, upstream_dir: its
    # world) is the same DAG with the same lineage: the study built its figures, nothing is stale.
    run = f"{ROOT}/runs/default/s0-t0"
    align = "{splits: [all], methods: [%s], drdo_mean: {base: drdo, logp_agg: mean}}" % ", ".join(methods)
    (tmp_path / "run.yaml").write_text(f"out_dir: {run}\nupstream_dir: {ROOT}/worlds/s0\nalign: {align}\n")
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


def test_study_figure_says_what_its_intervals_are_over():
    from drdo import plots

    def rows(worlds, seeds):
        return pd.DataFrame({"n_worlds": worlds, "n_seeds": seeds})

    assert plots.design_words(rows([5, 5], [2, 2])) == "mean over worlds and seeds, 95% interval over worlds"
    assert plots.design_words(rows([1, 1], [5, 1])) == "mean over seeds, 95% interval over one world's seeds and prompts"
    assert plots.design_words(rows([1], [1])) == "one run, 95% score interval over prompts"
    assert plots.design_words(rows([2, 1], [2, 2])).endswith("over worlds (one world: over its seeds and prompts)")

"""Aggregate a study (workflow/study.smk): win-rates per run, then over seeds.

A run is one world seed x one training seed x one variant. Per run and prompt, the outcome of
A vs B is 1 / 0.5 / 0 (win / tie / loss) by each scorer, as in ``drdo.winrates``; the
Oracle-vs-gold disagreement of a prompt is |outcome by Oracle - outcome by gold| (1 when they
pick different winners, 0.5 when one of them calls a tie). A prompt a scorer could not score
(NaN: too long) is left out of that scorer's measures, as ``winrates`` does. A run's value is the mean over its
prompts; a variant's value is the mean over its runs (seeds), and its 95% interval is a
two-level percentile bootstrap: resample the runs, then the prompts within each resampled run,
so the interval holds both the training variance across seeds and the prompt sampling.

    python -m drdo.study --runs JSON --params JSON --out study.csv [--expect-lineage JSON]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import io
from .winrates import comparisons, outcomes, policy_rows

log = logging.getLogger("drdo.study")

INTERVAL = "95% two-level percentile bootstrap (runs, then prompts within each run)"
COLUMNS = ["study", "factor", "level", "is_default", "variant", "split", "eval_set", "temperature", "measure",
           "scorer", "policy_a", "policy_b", "n_seeds", "n_prompts", "mean", "seed_sd", "ci_low", "ci_high"]
RUN_COLUMNS = ["variant", "world_seed", "train_seed", "split", "eval_set", "temperature", "measure", "scorer",
               "policy_a", "policy_b", "n_prompts", "value"]


def run_outcomes(scores: pd.DataFrame, methods: list[str], splits: list[str], scorers: list[str]) -> pd.DataFrame:
    """Per-prompt outcomes of one run: split, policy_a, policy_b, eval_set, temperature,
    prompt_id, and one column per scorer plus ``disagreement`` (when both scorers are there)."""
    key = ["eval_set", "prompt_id"]
    frames = []
    for split in splits:
        for a, b in comparisons(methods):
            left, right = policy_rows(scores, a, split, scorers), policy_rows(scores, b, split, scorers)
            on = key if a == "reference" else key + ["temperature"]
            m = left.merge(right, on=on, suffixes=("_a", "_b"), validate="one_to_many" if a == "reference" else "one_to_one")
            if m.empty or len(m) != len(right):
                raise ValueError(f"{a} and {b} on split {split} were not scored on the same prompts")
            out = m[["eval_set", "prompt_id", "temperature"]].assign(split=split, policy_a=a, policy_b=b)
            for s in scorers:
                out[s] = outcomes(m[f"{s}_a"].to_numpy() - m[f"{s}_b"].to_numpy())
            if {"oracle", "gold"} <= set(scorers):
                out["disagreement"] = np.abs(out["oracle"] - out["gold"])
            frames.append(out)
    return pd.concat(frames, ignore_index=True)


def two_level_interval(runs: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of the mean over runs, resampling runs and then prompts in each."""
    s = len(runs)
    pick = rng.integers(0, s, size=(n_boot, s))
    if len({len(r) for r in runs}) == 1:
        o, p = np.stack(runs), len(runs[0])
        means = o[pick[..., None], rng.integers(0, p, size=(n_boot, s, p))].mean(axis=(1, 2))
    else:  # runs with different prompt counts: resample each run separately
        per_run = [r[rng.integers(0, len(r), size=(n_boot, s, len(r)))].mean(axis=-1) for r in runs]
        draws = np.stack(per_run)  # (run, boot, slot)
        means = draws[pick, np.arange(n_boot)[:, None], np.arange(s)[None, :]].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def aggregate(runs: list[dict], params: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(study table, per-run table) from the run manifest written by workflow/study.smk."""
    scorers, methods, splits = params["scorers"], params["methods"], params["splits"]
    measures = [(s, "win_rate", s) for s in scorers]
    if {"oracle", "gold"} <= set(scorers):
        measures.append(("disagreement", "disagreement", "oracle_vs_gold"))
    per_prompt = []
    for run in runs:
        scores = pd.concat([io.read_parquet(f) for f in run["scores"].values()], ignore_index=True)
        o = run_outcomes(scores, methods, splits, scorers)
        per_prompt.append(o.assign(variant=run["variant"], world_seed=run["world_seed"], train_seed=run["train_seed"]))
    allp = pd.concat(per_prompt, ignore_index=True).sort_values(
        ["variant", "world_seed", "train_seed", "split", "policy_a", "policy_b", "eval_set", "temperature", "prompt_id"])
    group = ["variant", "split", "eval_set", "temperature", "policy_a", "policy_b"]
    run_key = ["world_seed", "train_seed"]

    run_rows, rows = [], []
    rng = np.random.default_rng(params["seed"])
    for gkey, g in allp.groupby(group, sort=True, dropna=False):
        g_runs = [r for _, r in g.groupby(run_key, sort=True)]
        for col, measure, scorer in measures:
            values = [r[col].dropna().to_numpy() for r in g_runs]
            keys = [k for (k, _), v in zip(g.groupby(run_key, sort=True), values) if len(v)]
            values = [v for v in values if len(v)]  # a run with no scorable prompt has no value
            if not values:
                continue
            run_means = np.array([v.mean() for v in values])
            for (ws, ts), v in zip(keys, values):
                run_rows.append({**dict(zip(group, gkey)), "world_seed": ws, "train_seed": ts, "measure": measure,
                                 "scorer": scorer, "n_prompts": len(v), "value": v.mean()})
            lo, hi = two_level_interval(values, params["n_boot"], rng)
            rows.append({**dict(zip(group, gkey)), "measure": measure, "scorer": scorer, "n_seeds": len(values),
                         "n_prompts": int(np.mean([len(v) for v in values])), "mean": run_means.mean(),
                         "seed_sd": run_means.std(ddof=1) if len(values) > 1 else np.nan, "ci_low": lo, "ci_high": hi})
    by_variant = pd.DataFrame(rows)

    # One block per factor level: the level's variant, or the baseline at the factor's default.
    levels = {}
    for run in runs:
        for name, level in run["levels"].items():
            levels.setdefault(name, {})[json.dumps(level)] = run["variant"]
    blocks = []
    for name, f in params["factors"].items():
        default = json.dumps(f["default"])
        for level, variant in sorted({default: "default", **levels.get(name, {})}.items()):
            block = by_variant[by_variant["variant"] == variant]
            blocks.append(block.assign(factor=name, level=json.loads(level), is_default=level == default))
    table = pd.concat(blocks, ignore_index=True).assign(study=params["name"])
    table["level"] = table["level"].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else str(v))
    return table[COLUMNS], pd.DataFrame(run_rows)[RUN_COLUMNS]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(prog="drdo.study", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=json.loads, required=True, help="JSON list of runs (variant, levels, seeds, scores)")
    ap.add_argument("--params", type=json.loads, required=True)
    ap.add_argument("--expect-lineage", type=json.loads, default=None)
    ap.add_argument("--version-mismatch", choices=["error", "warn"], default="error")
    ap.add_argument("--out", required=True, help="study.csv; the per-run values go beside it (study_runs.csv)")
    a = ap.parse_args(argv)
    if a.expect_lineage:
        io.check_lineage(a.expect_lineage, a.version_mismatch)
    table, per_run = aggregate(a.runs, a.params)
    inputs = {f"{r['variant']}/s{r['world_seed']}-t{r['train_seed']}/{p}": f
              for r in a.runs for p, f in r["scores"].items()}
    prov = io.provenance("study", {**a.params, "interval": INTERVAL}, inputs)
    io.write_csv(per_run, Path(a.out).with_name("study_runs.csv"), prov)
    io.write_csv(table, a.out, prov)
    log.info("wrote %d rows (%d runs) to %s", len(table), len(a.runs), a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

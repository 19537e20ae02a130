"""How large the world, seed and prompt effects of a committed study are, from its per-run values
(``study_runs.csv[.gz]``): the numbers tests/test_intervals.py simulates its coverage studies with.

    python bench/study_effects.py studies/drdo-gold-5worlds/study_runs.csv.gz --temperature 0.7

Per comparison (variant ``default``, win-rate by gold, at the temperature): the mean; the sd of
the world means (each world's mean over its training seeds); the within-world sd between the
training seeds; and a lower bound on the share of a prompt's outcome variance that the seeds of a
world share (a prompt effect): the seeds of a world score the same prompts, so their run means
differ only by seed effects and by the per-prompt noise that is not shared,
Var(run mean | world) = s_seed^2 + s_noise^2 / P; hence s_noise^2 <= P x (seed sd)^2, and with at
most p (1 - p) per-prompt variance the shared share is at least 1 - P (seed sd)^2 / (p (1 - p)).
Last, the skewness of the standardised world means, pooled over every comparison and variant,
by the comparison's mean.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd


def effects(runs: pd.DataFrame, temperature: float) -> pd.DataFrame:
    sel = runs[(runs["variant"] == "default") & (runs["measure"] == "win_rate") & (runs["scorer"] == "gold")
               & (runs["temperature"] == temperature) & (runs["policy_a"] != "reference")]
    rows = []
    for key, g in sel.groupby(["split", "eval_set", "policy_a", "policy_b"]):
        worlds = g.groupby("world_seed")["value"]
        p, n = g["value"].mean(), g["n_prompts"].mean()
        seed_var = worlds.var(ddof=1).mean()
        rows.append({**dict(zip(["split", "eval_set", "policy_a", "policy_b"], key)), "mean": p,
                     "world_sd": worlds.mean().std(ddof=1), "seed_sd": seed_var ** 0.5,
                     "shared_prompt_share_at_least": max(0.0, 1 - n * seed_var / (p * (1 - p))) if 0 < p < 1 else None})
    return pd.DataFrame(rows)


def skewness(runs: pd.DataFrame) -> pd.DataFrame:
    key = ["variant", "split", "eval_set", "temperature", "scorer", "policy_a", "policy_b"]
    wr = runs[(runs["measure"] == "win_rate") & (runs["policy_a"] != "reference")]
    wm = wr.groupby(key + ["world_seed"])["value"].mean().rename("wm").reset_index()
    g = wm.groupby(key)["wm"]
    wm = wm.assign(m=g.transform("mean"), s=g.transform("std"))
    wm = wm[wm["s"] > 0.1].assign(z3=lambda d: ((d["wm"] - d["m"]) / d["s"]) ** 3)
    bins = pd.cut(wm["m"], [0, 0.3, 0.45, 0.55, 0.7, 1.0], include_lowest=True)
    return wm.groupby(bins, observed=True)["z3"].agg(["mean", "count"]).rename(
        columns={"mean": "skewness", "count": "world_means"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", help="study_runs.csv or study_runs.csv.gz")
    ap.add_argument("--temperature", type=float, default=0.7)
    a = ap.parse_args(argv)
    runs = pd.read_csv(a.runs)
    pd.set_option("display.width", 200)
    print(effects(runs, a.temperature).round(3).to_string(index=False))
    print("\nskewness of world means (comparisons with a world sd above 0.1), by the comparison's mean:")
    print(skewness(runs).round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

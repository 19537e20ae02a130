"""Aggregate a study (workflow/study.smk): win-rates per run, then over worlds and seeds.

A run is one world seed x one training seed x one variant. Per run and prompt, the outcome of
A vs B is 1 / 0.5 / 0 (win / tie / loss) by each scorer, by the rules of ``drdo.winrates``
(identical responses tie; a response too long to score leaves the prompt out of that scorer;
unfinished responses by ``winrates.unfinished``); the Oracle-vs-gold disagreement of a prompt
is |outcome by Oracle - outcome by gold| (1 when they pick different winners, 0.5 when one of
them calls a tie). These per-prompt outcomes are kept (``study_outcomes.parquet``), so every
number of the table can be recomputed from them (``summarise``) without training anything;
outcomes kept under ``as_scored`` can be recounted under ``loss`` or ``drop`` (``reapply_unfinished``).

A run's value is the mean over its prompts, a world's the mean over its runs, and a
variant's the mean over its worlds: the estimate of the mean over the population of worlds,
training seeds and prompts. The runs of one world share its data, SFT model, Oracle and eval
prompts, so the world is the independent unit: with two or more worlds the 95% interval is
``intervals.world_interval`` on the world means (prompt and seed variance are inside them);
with one world it is about that world alone: ``intervals.crossed_interval`` over its seeds x
the prompts every seed could score (the mean too is over those), or with one seed
``intervals.score_interval`` over prompts (as winrates.csv).

    python -m drdo.study --runs JSON --params JSON --out study.csv [--expect-lineage JSON]
    python -m drdo.study --outcomes study_outcomes.parquet --out study.csv [--params JSON]
                         [--unfinished {as_scored,loss,drop}]
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
from .intervals import crossed_interval, score_interval, world_interval
from .winrates import UNFINISHED, comparisons, outcomes, pair_frame, read_scores

log = logging.getLogger("drdo.study")

INTERVAL = ("95%: >= 2 worlds: hull of the t interval (W - 1 df) on world means and the logit-normal generalised "
            "interval; 1 world: crossed seeds x prompts ANOVA interval (Satterthwaite df), or with 1 seed the "
            "continuity-corrected score interval over prompts")
COLUMNS = ["study", "factor", "level", "is_default", "variant", "split", "eval_set", "temperature", "measure",
           "scorer", "policy_a", "policy_b", "n_worlds", "n_seeds", "n_prompts", "mean", "seed_sd", "ci_low", "ci_high",
           "unfinished_a", "unfinished_b"]
RUN_COLUMNS = ["variant", "world_seed", "train_seed", "split", "eval_set", "temperature", "measure", "scorer",
               "policy_a", "policy_b", "n_prompts", "value"]
# per prompt and run: the outcome by each scorer (NaN: left out), the disagreement, and whether
# A's and B's responses hit the generation cap
OUTCOME_KEY = ["variant", "world_seed", "train_seed", "split", "policy_a", "policy_b", "eval_set", "temperature",
               "prompt_id"]


def run_outcomes(scores: pd.DataFrame, methods: list[str], splits: list[str], scorers: list[str],
                 unfinished: str = "as_scored") -> pd.DataFrame:
    """Per-prompt outcomes of one run: split, policy_a, policy_b, eval_set, temperature,
    prompt_id, one column per scorer, ``disagreement`` (when both scorers are there) and
    ``unfinished_a`` / ``unfinished_b``."""
    frames = []
    for split in splits:
        for a, b in comparisons(methods):
            m = pair_frame(scores, a, b, split, scorers)
            out = m[["eval_set", "prompt_id", "temperature"]].assign(split=split, policy_a=a, policy_b=b)
            for s in scorers:
                out[s] = outcomes(m, s, unfinished)
            _disagreement(out, scorers)
            out["unfinished_a"] = ~m["finished_a"].to_numpy(dtype=bool)
            out["unfinished_b"] = ~m["finished_b"].to_numpy(dtype=bool)
            frames.append(out)
    return pd.concat(frames, ignore_index=True)


def _disagreement(out: pd.DataFrame, scorers: list[str]) -> None:
    """Set ``out["disagreement"]`` from its Oracle and gold outcomes (when both scorers are there)."""
    if {"oracle", "gold"} <= set(scorers):
        out["disagreement"] = np.abs(out["oracle"] - out["gold"])


def reapply_unfinished(allp: pd.DataFrame, scorers: list[str], stored: str, unfinished: str,
                       source: str = "the outcomes") -> pd.DataFrame:
    """Per-prompt outcomes ``allp`` (``collect``'s, made under the rule ``stored``) as ``collect``
    would make them under the rule ``unfinished``, without the score files.

    Only ``as_scored`` outcomes can be recounted (``loss`` and ``drop`` lose the outcomes of the
    prompts with an unfinished response). ``winrates.outcomes`` applies the rule to a pair frame
    that gives back the stored outcomes (A scores the outcome, B 0.5) and the unfinished flags.
    The outcomes do not say which prompts had identical texts (a tie under every rule); those tie
    by every scorer, and the rules count them as two texts that tie by every scorer, except
    ``loss`` where one of them is unfinished: such prompts, if any, are refused."""
    if unfinished not in UNFINISHED:
        raise ValueError(f"unfinished must be one of {UNFINISHED}, got {unfinished!r}")
    if unfinished == stored:
        return allp
    if stored != "as_scored":
        raise ValueError(f"{source} holds outcomes counted with unfinished={stored!r}: only outcomes counted "
                         f"'as_scored' can be recounted as {unfinished!r}; rebuild the study from its score files")
    vals = allp[scorers].to_numpy(dtype=float)
    if not np.isin(vals[~np.isnan(vals)], (0.0, 0.5, 1.0)).all():
        raise ValueError(f"{source}: outcomes other than 0, 0.5, 1 or NaN in {scorers}")
    unf_a, unf_b = allp["unfinished_a"].to_numpy(dtype=bool), allp["unfinished_b"].to_numpy(dtype=bool)
    if unfinished == "loss" and (unknown := (vals == 0.5).all(axis=1) & (unf_a != unf_b)).any():
        raise ValueError(f"{source}: {int(unknown.sum())} prompts with one unfinished response tie by every scorer "
                         f"({', '.join(scorers)}); the outcomes cannot tell identical texts (a tie) from different "
                         f"texts that tie (a loss under 'loss'): rebuild the study from its score files")
    pairs = pd.DataFrame({"finished_a": ~unf_a, "finished_b": ~unf_b, "response_a": "a", "response_b": "b",
                          **{f"{s}_a": vals[:, k] for k, s in enumerate(scorers)},
                          **{f"{s}_b": np.full(len(allp), 0.5) for s in scorers}})
    out = allp.copy()
    for s in scorers:
        out[s] = outcomes(pairs, s, unfinished)
    _disagreement(out, scorers)
    return out


def measures(scorers: list[str]) -> list[tuple[str, str, str]]:
    """(outcome column, measure, scorer) of the study table."""
    out = [(s, "win_rate", s) for s in scorers]
    if {"oracle", "gold"} <= set(scorers):
        out.append(("disagreement", "disagreement", "oracle_vs_gold"))
    return out


def interval(y: np.ndarray, n_draws: int, seed: int) -> tuple[float, float, float, int]:
    """(mean, low, high, worlds) of one comparison's outcomes ``y[world, seed, prompt]`` (NaN: no
    outcome; a world's prompts are its own)."""
    y = y[~np.isnan(y).all(axis=(1, 2))]  # worlds with at least one outcome
    if len(y) == 0:
        return np.nan, np.nan, np.nan, 0
    if len(y) > 1:
        mean, lo, hi = world_interval(y, n_draws, seed)
        return float(mean), float(lo), float(hi), len(y)
    runs = y[0][~np.isnan(y[0]).all(axis=1)]  # [seeds with a value, prompts]
    runs = runs[:, ~np.isnan(runs).all(axis=0)]
    complete = runs[:, ~np.isnan(runs).any(axis=0)]  # prompts every seed could score
    if len(runs) > 1 and complete.shape[1] > 1:
        # the crossed design needs every seed on every prompt: the mean is of those prompts too,
        # so it is the estimate its interval is about
        mean, lo, hi = crossed_interval(complete)
    else:
        outcomes = runs.ravel()
        mean = np.nanmean(outcomes)
        lo, hi = score_interval(outcomes)
    return float(mean), float(lo), float(hi), 1


def _cube(g: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``g[cols]`` as an array [world, seed, prompt, col] (NaN where a run has no such prompt),
    with the world and training seed of each index."""
    worlds, w = np.unique(g["world_seed"].to_numpy(), return_inverse=True)
    seeds, s = np.unique(g["train_seed"].to_numpy(), return_inverse=True)
    _, p = np.unique(g["_prompt"].to_numpy(), return_inverse=True)
    y = np.full((len(worlds), len(seeds), p.max() + 1, len(cols)), np.nan)
    y[w, s, p] = g[cols].to_numpy(dtype=float)
    return y, worlds, seeds


def summarise(allp: pd.DataFrame, params: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table per variant, per-run table) from the per-prompt outcomes of every run."""
    group = ["variant", "split", "eval_set", "temperature", "policy_a", "policy_b"]
    meas = measures(params["scorers"])
    cols = [c for c, _, _ in meas]
    # a prompt is a (world, eval set, prompt id): every world draws its own prompts
    allp = allp.assign(_prompt=allp.groupby(["world_seed", "eval_set", "prompt_id"], sort=False).ngroup())
    run_rows, rows = [], []
    for gkey, g in allp.groupby(group, sort=True, dropna=False):
        unfinished = {"unfinished_a": float(g["unfinished_a"].mean()), "unfinished_b": float(g["unfinished_b"].mean())}
        y, worlds, seeds = _cube(g, cols)
        with np.errstate(invalid="ignore"):
            counts, sums = (~np.isnan(y)).sum(axis=2), np.nansum(y, axis=2)  # [world, seed, col]
        for k, (col, measure, scorer) in enumerate(meas):
            has = counts[..., k] > 0  # a run with no scorable prompt has no value
            if not has.any():
                continue
            run_means = sums[..., k][has] / counts[..., k][has]
            for (wi, si) in zip(*np.nonzero(has)):
                run_rows.append({**dict(zip(group, gkey)), "world_seed": worlds[wi], "train_seed": seeds[si],
                                 "measure": measure, "scorer": scorer, "n_prompts": int(counts[wi, si, k]),
                                 "value": sums[wi, si, k] / counts[wi, si, k]})
            mean, lo, hi, n_worlds = interval(y[..., k], params["n_draws"], params["seed"])
            rows.append({**dict(zip(group, gkey)), "measure": measure, "scorer": scorer, "n_worlds": n_worlds,
                         "n_seeds": int(has.sum()), "n_prompts": int(counts[..., k][has].mean()), "mean": mean,
                         "seed_sd": run_means.std(ddof=1) if len(run_means) > 1 else np.nan,
                         "ci_low": lo, "ci_high": hi, **unfinished})
    return pd.DataFrame(rows), pd.DataFrame(run_rows)[RUN_COLUMNS]


def collect(runs: list[dict], params: dict) -> pd.DataFrame:
    """Per-prompt outcomes of every run of the manifest (``OUTCOME_KEY``, scorers, disagreement,
    unfinished flags), from its score files."""
    scorers = params["scorers"]
    per_prompt = []
    for run in runs:
        scores = read_scores(list(run["scores"].values()), scorers)
        o = run_outcomes(scores, params["methods"], params["splits"], scorers, params["unfinished"])
        per_prompt.append(o.assign(variant=run["variant"], world_seed=run["world_seed"], train_seed=run["train_seed"]))
    allp = pd.concat(per_prompt, ignore_index=True)
    cols = OUTCOME_KEY + [c for c, _, _ in measures(scorers)] + ["unfinished_a", "unfinished_b"]
    return allp[cols].sort_values(OUTCOME_KEY, ignore_index=True)


def aggregate(runs: list[dict], params: dict, allp: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(study table, per-run table) from the run manifest written by workflow/study.smk, and
    the per-prompt outcomes (``collect``; read from the score files when not given)."""
    by_variant, per_run = summarise(collect(runs, params) if allp is None else allp, params)

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
    return table[COLUMNS], per_run


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(prog="drdo.study", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=json.loads, default=None,
                    help="JSON list of runs (variant, levels, seeds, scores); with --outcomes: the variants "
                         "and levels its provenance records")
    ap.add_argument("--params", type=json.loads, default=None,
                    help="JSON study parameters; with --outcomes: by default those its provenance records")
    ap.add_argument("--expect-lineage", type=json.loads, default=None)
    ap.add_argument("--version-mismatch", choices=["error", "warn"], default="error")
    ap.add_argument("--outcomes", default=None,
                    help="recompute from this study_outcomes.parquet instead of reading the score files")
    ap.add_argument("--unfinished", choices=UNFINISHED, default=None,
                    help="count unfinished responses by this rule (winrates.unfinished) instead of the parameters'; "
                         "with --outcomes, recounted from outcomes counted as_scored")
    ap.add_argument("--out", required=True,
                    help="study.csv; the per-run values (study_runs.csv) and, from score files, the per-prompt "
                         "outcomes (study_outcomes.parquet) go beside it")
    a = ap.parse_args(argv)
    if a.expect_lineage:
        io.check_lineage(a.expect_lineage, a.version_mismatch)
    out = Path(a.out)
    if a.outcomes:
        allp, inputs = io.read_parquet(a.outcomes), {"outcomes": a.outcomes}
        made = allp.attrs.get("provenance", {})
        if a.params is None:
            a.params = {k: v for k, v in made.get("config", {}).items() if k != "interval"}
        if a.runs is None:
            if "variants" not in made:
                ap.error(f"{a.outcomes} records no variants (an older study): pass --runs")
            a.runs = [{"variant": v, "levels": levels} for v, levels in made["variants"].items()]
        if a.unfinished is not None:
            if "unfinished" not in made.get("config", {}):
                ap.error(f"{a.outcomes} records no unfinished rule: it cannot be recounted with --unfinished")
            allp = reapply_unfinished(allp, a.params["scorers"], made["config"]["unfinished"], a.unfinished,
                                      a.outcomes)
            a.params = {**a.params, "unfinished": a.unfinished}
    elif a.runs is None or a.params is None:
        ap.error("--runs and --params are required without --outcomes")
    else:
        if a.unfinished is not None:
            a.params = {**a.params, "unfinished": a.unfinished}
        allp = collect(a.runs, a.params)
        inputs = {f"{r['variant']}/s{r['world_seed']}-t{r['train_seed']}/{p}": f
                  for r in a.runs for p, f in r["scores"].items()}
    table, per_run = aggregate(a.runs, a.params, allp)
    prov = io.provenance("study", {**a.params, "interval": INTERVAL}, inputs)
    prov["variants"] = {r["variant"]: r["levels"] for r in a.runs}  # what --outcomes needs besides params
    if not a.outcomes:
        io.write_parquet(allp, out.with_name("study_outcomes.parquet"), prov, compression="zstd")
    io.write_csv(per_run, out.with_name("study_runs.csv"), prov)
    io.write_csv(table, out, prov)
    log.info("wrote %d rows (%d runs, %d per-prompt outcomes) to %s", len(table), len(a.runs), len(allp), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

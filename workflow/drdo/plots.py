"""Figures of a run and of a study, for ``snakemake --report``.

    python -m drdo.plots curves  --models DIR... --title T --out fig.png   # training curves
    python -m drdo.plots forest  --winrates winrates.csv --scorer gold --out fig.png
    python -m drdo.plots lengths --generations FILE... --out fig.png
    python -m drdo.plots study   --table study.csv --scorer gold|oracle|disagreement --temperature 0.7 --out fig.png

Deterministic: the Agg backend, a fixed style, inputs sorted, and PNG metadata holding only
the provenance (stage, inputs' sha256, versions, commit), no timestamp: the same inputs and
code give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import io  # noqa: E402

log = logging.getLogger("drdo.plots")
plt.rcParams.update({"figure.dpi": 100, "font.size": 8, "axes.titlesize": 9, "axes.grid": True, "grid.alpha": 0.3})
COLORS = {"drdo": "#d62728", "dpo": "#1f77b4", "edpo": "#2ca02c", "sft": "#7f7f7f", "oracle": "#9467bd",
          "reference": "#000000"}
NOT_LOSS = {"step", "lr", "grad_norm", "logp_chosen", "logp_rejected"}


def save(fig, out: str, prov: dict) -> None:
    with io.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None, "drdo.provenance": json.dumps(prov, sort_keys=True,
                                                                                              default=str)})
    plt.close(fig)


def _smooth(y: pd.Series) -> pd.Series:
    return y.rolling(max(1, len(y) // 20), min_periods=1).mean()


def curves(models: list[str], title: str) -> plt.Figure:
    """One row per model: its loss terms, its accuracies (implicit reward, student reward, ...),
    and the mean chosen / rejected log-probs, per optimizer step (rolling mean over 5% of steps)."""
    fig, axes = plt.subplots(len(models), 3, figsize=(11, 2.3 * len(models) + 0.6), squeeze=False)
    for row, path in zip(axes, models):
        m = pd.read_parquet(Path(path) / "metrics.parquet").sort_values("step")
        name = Path(path).name
        acc = [c for c in m.columns if c.endswith("_acc") or c == "p_w"]  # DRDO's p_w is a probability too
        loss = [c for c in m.columns if c not in NOT_LOSS and c not in acc and m[c].notna().any()]
        for ax, cols, label in ((row[0], loss, "loss terms"), (row[1], acc, "accuracy / probability"),
                                (row[2], [c for c in ("logp_chosen", "logp_rejected") if c in m], "log-prob")):
            for c in cols:
                ax.plot(m["step"], _smooth(m[c]), label=c, lw=1.2)
            ax.set_title(f"{name}: {label}")
            ax.set_xlabel("optimizer step")
            if cols:
                ax.legend(fontsize=6, loc="best")
            else:
                ax.text(0.5, 0.5, "not logged by this objective", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def forest(winrates: pd.DataFrame, scorer: str) -> plt.Figure:
    """Win-rate of A over B with its 95% interval, one row per comparison and split, one panel
    per eval set, one marker per sampling temperature."""
    w = winrates[winrates["scorer"] == scorer].copy()
    w["pair"] = w["policy_a"] + " vs " + w["policy_b"]
    w["row"] = w["pair"] + "  [" + w["split"] + "]"
    pair_order = {p: i for i, p in enumerate(dict.fromkeys(w["pair"]))}  # the table's order: method pairs first
    split_order = {s: i for i, s in enumerate(dict.fromkeys(w["split"]))}
    rows = sorted(dict.fromkeys(w["row"]), key=lambda r: (pair_order[r.split("  [")[0]], split_order[r.split("  [")[1][:-1]]))
    temps = sorted(w["temperature"].unique())
    sets = sorted(w["eval_set"].unique())
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 0.22 * len(rows) * len(temps) + 1.2),
                             sharey=True, squeeze=False)
    for ax, eval_set in zip(axes[0], sets):
        for k, t in enumerate(temps):
            g = w[(w["eval_set"] == eval_set) & (w["temperature"] == t)].set_index("row").reindex(rows)
            y = np.arange(len(rows)) + (k - (len(temps) - 1) / 2) * 0.8 / max(1, len(temps))
            ax.errorbar(g["win_rate"], y, xerr=[g["win_rate"] - g["ci_low"], g["ci_high"] - g["win_rate"]],
                        fmt="o", ms=3, lw=1, capsize=2, label=f"T = {t:g}")
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_yticks(np.arange(len(rows)), rows)
        ax.invert_yaxis()
        ax.set_title(f"{eval_set}: win-rate of A over B by {scorer}")
        ax.set_xlabel("win-rate (ties count half), 95% score interval over prompts")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def lengths(generations: list[str]) -> plt.Figure:
    """Response length (tokens) of each policy's generations, all temperatures pooled."""
    frames = [io.read_parquet(f).assign(policy=Path(f).stem) for f in sorted(generations)]
    g = pd.concat(frames, ignore_index=True)
    sets = sorted(g["eval_set"].unique())
    policies = sorted(g["policy"].unique(), key=lambda p: (p != "sft", p))
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 0.3 * len(policies) + 1.5), sharey=True,
                             squeeze=False)
    for ax, eval_set in zip(axes[0], sets):
        data = [g[(g["eval_set"] == eval_set) & (g["policy"] == p)]["n_tokens"].to_numpy() for p in policies]
        box = ax.boxplot(data, vert=False, tick_labels=policies, patch_artist=True, showmeans=True)
        for patch, p in zip(box["boxes"], policies):
            patch.set_facecolor(COLORS.get(p.split("-")[0], "#cccccc"))
            patch.set_alpha(0.5)
        ax.invert_yaxis()
        ax.set_title(f"{eval_set}: generated tokens per response")
        ax.set_xlabel("tokens (box: quartiles; triangle: mean)")
    fig.tight_layout()
    return fig


STUDY_PAIRS = [("drdo", "dpo"), ("drdo", "edpo"), ("drdo", "sft"), ("dpo", "sft"), ("edpo", "sft")]


def study_pairs(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The comparisons a study figure shows: DRDO against the paper's baselines, and every
    other method (the noise-robust baselines, named DRDO variants) against SFT."""
    methods = list(dict.fromkeys(table.loc[table["policy_b"] == "sft", "policy_a"]))
    return STUDY_PAIRS + [(m, "sft") for m in methods if (m, "sft") not in STUDY_PAIRS]


def design_words(table: pd.DataFrame) -> str:
    """What a study figure's means and intervals are over, from its rows' numbers of worlds and seeds."""
    kinds = {"worlds" if w > 1 else "seeds" if s > 1 else "run" for w, s in zip(table["n_worlds"], table["n_seeds"])}
    if kinds == {"run"}:
        return "one run, 95% score interval over prompts"
    if kinds <= {"seeds", "run"}:
        return "mean over seeds, 95% interval over one world's seeds and prompts"
    if kinds == {"worlds"}:
        return "mean over worlds and seeds, 95% interval over worlds"
    return "mean over worlds and seeds, 95% interval over worlds (one world: over its seeds and prompts)"


def study(table: pd.DataFrame, scorer: str, temperature: float) -> plt.Figure:
    """Mean over runs with its 95% interval, for each factor level (filled: the default),
    one panel per comparison and eval set."""
    measure = "disagreement" if scorer == "disagreement" else "win_rate"
    t = table[table["measure"] == measure]
    if scorer != "disagreement":
        t = t[t["scorer"] == scorer]
    temps = np.array(sorted(t["temperature"].unique()))
    temp = float(temps[np.argmin(np.abs(temps - temperature))])
    t = t[t["temperature"] == temp]
    pairs = [p for p in study_pairs(t) if ((t["policy_a"] == p[0]) & (t["policy_b"] == p[1])).any()]
    t = t.assign(row=t["factor"] + " = " + t["level"])
    rows = list(dict.fromkeys(t.sort_values(["factor", "level"])["row"]))
    sets, splits = sorted(t["eval_set"].unique()), sorted(t["split"].unique())
    panels = [(eval_set, pair) for eval_set in sets for pair in pairs]
    ncol = min(len(pairs), 5)  # wrapped, so that a study of many methods stays readable
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol + 1.5, (0.25 * len(rows) + 0.9) * nrow + 0.8),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (eval_set, (a, b)) in zip(axes.flat, panels):
        for k, split in enumerate(splits):
            g = t[(t["eval_set"] == eval_set) & (t["policy_a"] == a) & (t["policy_b"] == b) & (t["split"] == split)]
            g = g.set_index("row").reindex(rows)
            y = np.arange(len(rows)) + (k - (len(splits) - 1) / 2) * 0.25
            ax.errorbar(g["mean"], y, xerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]], fmt="none",
                        lw=1, capsize=2, color=f"C{k}")
            default = g["is_default"].fillna(False).astype(bool).to_numpy()
            ax.scatter(g["mean"][default], y[default], s=18, color=f"C{k}", label=f"split {split}", zorder=3)
            ax.scatter(g["mean"][~default], y[~default], s=18, facecolors="white", edgecolors=f"C{k}", zorder=3)
        ax.axvline(0.5 if measure == "win_rate" else 0.0, color="k", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_yticks(np.arange(len(rows)), rows)
        ax.invert_yaxis()
        what = f"{a} vs {b}" + (" (Oracle vs gold)" if measure == "disagreement" else f" by {scorer}")
        ax.set_title(f"{eval_set}: {what}")
    for ax in axes.flat[max(0, len(panels) - ncol):len(panels)]:
        ax.set_xlabel("disagreement rate" if measure == "disagreement" else "win-rate of A over B")
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"T = {temp:g}; {design_words(t)} (study.csv); filled = default level")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(prog="drdo.plots", description=__doc__.split("\n")[0])
    ap.add_argument("--expect-lineage", type=json.loads, default=None)
    ap.add_argument("--version-mismatch", choices=["error", "warn"], default="error")
    sub = ap.add_subparsers(dest="kind", required=True)
    sp = sub.add_parser("curves")
    sp.add_argument("--models", nargs="+", required=True)
    sp.add_argument("--title", default="training curves")
    sp = sub.add_parser("forest")
    sp.add_argument("--winrates", required=True)
    sp.add_argument("--scorer", required=True)
    sp = sub.add_parser("lengths")
    sp.add_argument("--generations", nargs="+", required=True)
    sp = sub.add_parser("study")
    sp.add_argument("--table", required=True)
    sp.add_argument("--scorer", required=True, choices=["oracle", "gold", "disagreement"])
    sp.add_argument("--temperature", type=float, default=0.7)
    for p in sub.choices.values():
        p.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.expect_lineage:
        io.check_lineage(a.expect_lineage, a.version_mismatch)
    if a.kind == "curves":
        fig, inputs = curves(a.models, a.title), {Path(m).name: Path(m) / "metrics.parquet" for m in a.models}
    elif a.kind == "forest":
        fig, inputs = forest(pd.read_csv(a.winrates), a.scorer), {"winrates": a.winrates}
    elif a.kind == "lengths":
        fig, inputs = lengths(a.generations), {Path(f).stem: f for f in a.generations}
    else:
        fig, inputs = study(pd.read_csv(a.table, dtype={"level": str}), a.scorer, a.temperature), {"table": a.table}
    params = {k: v for k, v in vars(a).items() if k not in ("out", "expect_lineage", "version_mismatch", "models", "generations")}
    save(fig, a.out, io.provenance(f"plots.{a.kind}", params, inputs))
    log.info("wrote %s", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

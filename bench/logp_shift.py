"""How alignment moved each policy's log-probs of the chosen and the rejected responses.

For every aligned policy of a finished run (``models/<method>-<split>``), score the held-out
validation pairs of its split under the policy and under its reference (the SFT model it
started from), with the workflow's own ``table`` stage and the reference table's params, so
the values are the sequence log-probs the losses saw. Per policy, the mean change
(policy - reference) of log pi(y_w|x), of log pi(y_l|x) and of their margin, each with a 95%
normal interval over pairs; the mean changes per word of each response (whitespace words: a
longer response's sum moves more for the same per-token change); the share of pairs whose
margin grew; and the pair accuracy log pi(y_w|x) > log pi(y_l|x) of the policy and of SFT.

    PYTHONPATH=workflow python bench/logp_shift.py --run results [--part train] [--csv out.csv]

Run it from the workflow's directory: the manifests name their inputs relative to it.

A reading of DRDO's Eq. 6 is that with summed log-probs it mostly raises the chosen
response's likelihood and leaves the rejected one alone, where DPO's Eq. 3 moves the margin
(docs/findings.md); this measures what each method did to the two sides.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from drdo import io
from stages import run_stage

METHODS = ("drdo", "dpo", "edpo")


def aligned_policies(run: Path) -> pd.DataFrame:
    """One row per aligned policy: method, split, its directory, the split file and its reference."""
    rows = []
    for manifest_path in sorted((run / "models").glob("*/" + io.MANIFEST)):
        manifest = io.read_provenance(manifest_path.parent)
        method = manifest["stage"].removeprefix("train/")
        if method in METHODS:
            inputs = manifest["inputs"]
            rows.append({"policy": manifest_path.parent.name, "method": method,
                         "split": Path(inputs["data"]["path"]).stem, "path": manifest_path.parent,
                         "data": Path(inputs["data"]["path"]), "reference": Path(inputs["init"]["path"])})
    if not rows:
        raise SystemExit(f"no aligned policy ({', '.join(METHODS)}) under {run / 'models'}")
    return pd.DataFrame(rows)


def _mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def shifts(run: Path, part: str, threads: int, work: Path) -> pd.DataFrame:
    params = io.read_provenance(run / "tables" / "reference_logps.parquet")["config"]
    policies = aligned_policies(run)
    out = []
    for (data, reference), group in policies.groupby(["data", "reference"], sort=False):
        pairs = io.read_parquet(data)
        pairs = pairs[pairs["split"] == part]
        if len(pairs) < 2:
            raise SystemExit(f"{data}: {len(pairs)} {part} pairs; at least 2 are needed for an interval")
        pairs_file, table_file = work / f"{data.stem}_{part}.parquet", work / f"{data.stem}_logps.parquet"
        io.write_parquet(pairs, pairs_file, {"stage": "bench/logp_shift", "source": str(data), "part": part})
        models = [f"ref={reference}"]
        models += [f"{row.policy}={row.path}" for row in group.itertuples()]
        run_stage(threads, ["table", "--params", json.dumps(params), "--pairs", str(pairs_file),
                            "--value", "logp", "--out", str(table_file),
                            *[arg for m in models for arg in ("--model", m)]], work / f"{data.stem}.log")
        table = io.read_parquet(table_file)
        assert table["pair_id"].tolist() == pairs["pair_id"].tolist()  # the table keeps the pairs' order
        for row in group.itertuples():
            d_w = (table[f"{row.policy}_chosen"] - table["ref_chosen"]).to_numpy()
            d_l = (table[f"{row.policy}_rejected"] - table["ref_rejected"]).to_numpy()
            result = {"policy": row.policy, "method": row.method, "split": row.split, "pairs": len(table)}
            for name, values in (("d_chosen", d_w), ("d_rejected", d_l), ("d_margin", d_w - d_l)):
                result[name], result[f"{name}_lo"], result[f"{name}_hi"] = _mean_ci(values)
            result["margin_grew"] = float((d_w > d_l).mean())
            for side, d in (("chosen", d_w), ("rejected", d_l)):  # words: the response split on whitespace
                words = pairs[side].str.split().str.len().clip(lower=1).to_numpy()
                result[f"d_{side}_per_word"] = float((d / words).mean())
            result["policy_acc"] = float((table[f"{row.policy}_chosen"] > table[f"{row.policy}_rejected"]).mean())
            result["reference_acc"] = float((table["ref_chosen"] > table["ref_rejected"]).mean())
            out.append(result)
    return pd.DataFrame(out).sort_values(["split", "method"], ignore_index=True)


def markdown(df: pd.DataFrame) -> str:
    def cell(r, name):
        return f"{r[name]:+.2f} [{r[f'{name}_lo']:+.2f}, {r[f'{name}_hi']:+.2f}]"
    lines = ["| split | method | pairs | Δ log π(y_w) | Δ log π(y_l) | Δ margin | Δ per word w / l | margin grew "
             "| acc policy / SFT |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['split']} | {r['method']} | {r['pairs']} | {cell(r, 'd_chosen')} | {cell(r, 'd_rejected')} | "
              f"{cell(r, 'd_margin')} | {r['d_chosen_per_word']:+.2f} / {r['d_rejected_per_word']:+.2f} | "
              f"{r['margin_grew']:.3f} | {r['policy_acc']:.3f} / {r['reference_acc']:.3f} |" for _, r in df.iterrows()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("results"), help="a finished run's out_dir")
    ap.add_argument("--part", default="validation", choices=["validation", "train"], help="which pairs of each split")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the scoring stage")
    ap.add_argument("--csv", type=Path, default=None, help="also write the table here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="logp_shift_") as work:
        df = shifts(a.run, a.part, a.threads, Path(work))
    if a.csv:
        df.to_csv(a.csv, index=False)
    print(markdown(df))


if __name__ == "__main__":
    main()

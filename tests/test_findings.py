"""The study tables of the docs are the committed studies' numbers: every cell "m [lo, hi]" of the
tables below equals its row of `studies/<name>/study.csv` at two decimals, and a win-rate is bold
exactly when its interval excludes 0.5 (the docs' rule)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
FINDINGS = (REPO / "docs" / "findings.md").read_text()
README = (REPO / "README.md").read_text()

CELL = re.compile(r"(\*\*)?(\d\.\d\d)(\*\*)? \[(\d\.\d\d), (\d\.\d\d)\](\*\*)?")
POLICY = {"DRDO": "drdo", "DPO": "dpo", "e-DPO": "edpo", "cDPO": "cdpo", "rDPO": "rdpo", "IPO": "ipo",
          "SFT": "sft", "drdo_logprob": "drdo_logprob", "drdo_mean": "drdo_mean"}
EVAL_SET = {"TL;DR": "tldr", "news": "news"}


def table_after(text: str, caption: str) -> tuple[list[str], list[list[str]]]:
    """The header and body cells of the first Markdown table after `caption`."""
    assert text.count(caption) == 1, f"caption {caption!r} not found once"
    lines = text[text.index(caption):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.lstrip().startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[0], rows[2:]


def study_row(study: str, **where) -> pd.Series:
    table = _study(study)
    where = {"split": "all", "eval_set": "tldr", "temperature": 0.7, "measure": "win_rate",
             "scorer": "gold", **where}
    mask = pd.Series(True, index=table.index)
    for key, value in where.items():
        mask &= table[key] == value
    # the default runs appear once under each factor, with the same numbers
    rows = table[mask].drop_duplicates(["mean", "ci_low", "ci_high"])
    assert len(rows) == 1, f"{study}: {len(rows)} rows for {where}"
    return rows.iloc[0]


@functools.cache
def _study(name: str) -> pd.DataFrame:
    return pd.read_csv(REPO / "studies" / name / "study.csv")


def check_cell(cell: str, row: pd.Series, where: str) -> None:
    found = CELL.search(cell)
    assert found, f"{where}: no 'm [lo, hi]' in {cell!r}"
    shown = tuple(found.group(i) for i in (2, 4, 5))
    expected = tuple(f"{row[k]:.2f}" for k in ("mean", "ci_low", "ci_high"))
    assert shown == expected, f"{where}: the docs say {shown}, study.csv says {expected}"
    if row["measure"] == "win_rate":
        bold = any(found.group(i) for i in (1, 3, 6))
        excludes = row["ci_low"] > 0.5 or row["ci_high"] < 0.5
        assert bold == excludes, f"{where}: {cell!r} is {'' if bold else 'not '}bold"


def pair(label: str) -> dict:
    """'*by the Oracle:* DRDO vs DPO' -> the study.csv columns it names."""
    where = {}
    if "by the Oracle" in label:
        where["scorer"] = "oracle"
    if "disagreement" in label:
        where.update(measure="disagreement", scorer="oracle_vs_gold")
    a, b = re.sub(r"\*[^*]*\*", "", label).replace("`", "").strip().split(" vs ")
    return {**where, "policy_a": POLICY[a], "policy_b": POLICY[b]}


SPLIT_TABLES = [  # (caption, study, variant)
    ("TL;DR prompts, default noise (0.25)**", "drdo-baselines-5worlds", "default"),
    ("**The same at four times the noise (1.0)**", "drdo-baselines-5worlds", "label_noise=1.0"),
    ("the 10 runs [95% two-level bootstrap", "drdo-gold-5worlds", "default"),
]


@pytest.mark.parametrize("caption, study, variant", SPLIT_TABLES)
def test_split_tables_are_the_studys(caption, study, variant):
    header, body = table_after(FINDINGS, caption)
    splits = [h.strip("`") for h in header]
    assert {"all", "hc_he", "lc_le"} <= set(splits)
    for cells in body:
        where = {"variant": variant}
        if header[0] == "eval set":
            where["eval_set"] = EVAL_SET[cells[0]]
        label = cells[header.index("A vs B")]
        where.update(pair(label))
        for split, cell in zip(splits, cells):
            if split in ("all", "hc_he", "lc_le"):
                check_cell(cell, study_row(study, split=split, **where), f"{study} {label} {split}")


EARLIER_VARIANT = {"default": "default", "logp_agg: mean": "logp_agg=mean",
                   "student_reward: logprob": "student_reward=logprob", "gamma: 0": "gamma=0.0",
                   "gamma: 5": "gamma=5.0", "alpha: 1": "alpha=1.0", "teacher: gold": "teacher=gold",
                   "label_temperature: 1.0": "label_noise=1.0"}
EARLIER_COLUMNS = [  # (study, policy_b, eval_set, scorer), in the table's order
    ("drdo-gold-ablations", "dpo", "tldr", "gold"), ("drdo-gold-ablations", "dpo", "news", "gold"),
    ("drdo-gold-ablations", "sft", "tldr", "gold"), ("drdo-gold-ablations", "dpo", "tldr", "oracle"),
    ("drdo-gold-worlds", "dpo", "tldr", "gold"), ("drdo-gold-worlds", "dpo", "news", "gold"),
]


def test_earlier_studies_table_is_the_studies():
    header, body = table_after(FINDINGS, "DRDO (`all`) by gold at T = 0.7")
    assert len(header) == 1 + len(EARLIER_COLUMNS)
    for cells in body:
        variant = EARLIER_VARIANT[cells[0].strip("`")]
        for (study, b, eval_set, scorer), cell in zip(EARLIER_COLUMNS, cells[1:]):
            if cell:
                row = study_row(study, variant=variant, policy_a="drdo", policy_b=b,
                                eval_set=eval_set, scorer=scorer)
                check_cell(cell, row, f"{study} {variant} vs {b} {eval_set} {scorer}")


SWITCH_VARIANT = {"paper's settings": "default", "student_reward: logprob": "student_reward=logprob",
                  "logp_agg: mean": "logp_agg=mean", "gamma: 0": "gamma=0.0", "gamma: 1": "gamma=1.0",
                  "gamma: 5": "gamma=5.0", "alpha: 1": "alpha=1.0", "teacher: gold": "teacher=gold",
                  "DPO beta: 0.5": "dpo_beta=0.5"}
SWITCH_COLUMNS = [("edpo", "all", "gold"), ("sft", "all", "gold"), ("sft", "lc_le", "gold"), ("dpo", "all", "oracle")]
SHORT_CELL = re.compile(r"(\*\*)?(\d\.\d\d)")


def test_five_world_switch_table_is_the_study():
    """Its first column is DRDO vs DPO on `all` / `hc_he` / `lc_le`, some with an interval."""
    header, body = table_after(FINDINGS, "| variant (one switch from the paper's settings) |")
    assert len(header) == 2 + len(SWITCH_COLUMNS)
    for cells in body:
        label = re.sub(r" \(.*\)$", "", cells[0]).replace("`", "")
        variant = SWITCH_VARIANT[label]
        for split, part in zip(("all", "hc_he", "lc_le"), cells[1].split(" / "), strict=True):
            row = study_row("drdo-gold-5worlds", variant=variant, policy_a="drdo", policy_b="dpo", split=split)
            where = f"{variant} vs dpo {split}"
            if "[" in part:
                check_cell(part, row, where)
                continue
            bold, mean = SHORT_CELL.match(part).groups()
            assert mean == f"{row['mean']:.2f}", f"{where}: the docs say {mean}, study.csv {row['mean']:.2f}"
            assert bool(bold) == (row["ci_low"] > 0.5 or row["ci_high"] < 0.5), f"{where}: {part!r}"
        for (b, split, scorer), cell in zip(SWITCH_COLUMNS, cells[2:]):
            if cell:
                row = study_row("drdo-gold-5worlds", variant=variant, policy_a="drdo", policy_b=b,
                                split=split, scorer=scorer)
                check_cell(cell, row, f"{variant} vs {b} {split} {scorer}")


def test_readme_headline_is_the_baselines_study():
    header, body = table_after(README, "## Headline result")
    columns = [("dpo", "default"), ("ipo", "default"), ("dpo", "label_noise=1.0")]
    assert [h.split(",")[0] for h in header[1:4]] == ["vs DPO", "vs IPO", "vs DPO"]
    for cells in body:
        # "paper's settings (`drdo`)", "`logp_agg: mean`", "`student_reward: logprob`"
        policy_a = {"drdo": "drdo", "logp_agg": "drdo_mean",
                    "student_reward": "drdo_logprob"}[re.search(r"`(\w+)", cells[0]).group(1)]
        for (b, variant), cell in zip(columns, cells[1:4]):
            row = study_row("drdo-baselines-5worlds", variant=variant, policy_a=policy_a, policy_b=b)
            check_cell(cell, row, f"README {policy_a} vs {b} ({variant})")


def test_the_checker_catches_a_wrong_number_and_a_wrong_bold():
    row = pd.Series({"mean": 0.33, "ci_low": 0.25, "ci_high": 0.41, "measure": "win_rate"})
    check_cell("**0.33 [0.25, 0.41]**", row, "ok")
    with pytest.raises(AssertionError, match="study.csv says"):
        check_cell("**0.34 [0.25, 0.41]**", row, "number")
    with pytest.raises(AssertionError, match="not bold"):
        check_cell("0.33 [0.25, 0.41]", row, "bold")

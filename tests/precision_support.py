"""Shared by the precision tests: a trained DRDO checkpoint's validation metrics recomputed as
``cmd_train`` computes them, with or without training's bf16 autocast."""

from __future__ import annotations

from pathlib import Path

import torch

from drdo import cli, io, objectives
from drdo.modeling import LMWithRewardHead, load_tokenizer
from drdo.trainer import evaluate


def validation_under(out: Path, pairs: Path, table: Path, params: dict, autocast: bool) -> dict:
    """Validation metrics of ``out`` (a DRDO checkpoint saved in float32, trained on ``pairs``
    with the teacher ``table`` and ``params``)."""
    model, tokenizer = LMWithRewardHead.from_pretrained(out), load_tokenizer(out)
    objective = objectives.build("drdo", params)
    data = cli._join_table(io.read_parquet(pairs), table, objective.columns)
    examples = cli._examples(data[data["split"] == "validation"], tokenizer, objective, params)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return evaluate(model, examples, objective, tokenizer.pad_token_id, params["eval_batch_size"])

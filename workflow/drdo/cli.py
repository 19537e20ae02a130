"""Entry points of the workflow's stages: ``python -m drdo STAGE [options]``.

Each Snakemake rule calls one stage with its inputs, outputs and a JSON ``--params`` (the
config subset the job depends on). The same commands run under a launcher such as
``accelerate launch -m drdo train ...`` on GPUs. Every output is written atomically and
carries its provenance (``drdo.io``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import gold, io, objectives
from .base_model import build_base
from .batching import encode
from .data import loaders, splits
from .generation import generate
from .modeling import LMWithRewardHead, for_inference, load_causal_lm, load_tokenizer
from .scoring import score
from .trainer import Example, TrainConfig, evaluate, make_accelerator, train
from .winrates import winrate_table

log = logging.getLogger("drdo")


# --------------------------------------------------------------------------- data
def cmd_normalise(a) -> None:
    p = a.params
    pairs, drops = loaders.load_comparisons(a.comparisons)
    log.info("comparisons: kept %d pairs; dropped %s", len(pairs), drops)
    sft, sft_drops = loaders.load_sft(a.sft_train)
    log.info("sft: kept %d rows; dropped %s", len(sft), sft_drops)
    sft_test, test_drops = loaders.load_sft(a.sft_test)
    news, news_drops = loaders.load_news(a.news)
    log.info("eval sources: tldr %d (dropped %s), news %d (dropped %s)", len(sft_test), test_drops,
             len(news), news_drops)
    evals = loaders.eval_prompts(sft_test, news, p["n_tldr"], p["n_news"], p["seed"])
    inputs = {"comparisons": a.comparisons, "sft_train": a.sft_train, "sft_test": a.sft_test, "news": a.news}
    prov = io.provenance("normalise", p, inputs)
    io.write_parquet(pairs, a.out_pairs, {**prov, "drops": drops})
    io.write_parquet(sft, a.out_sft, {**prov, "drops": sft_drops})
    io.write_parquet(evals, a.out_eval, prov)


def cmd_base(a) -> None:
    pairs, sft = io.read_parquet(a.pairs), io.read_parquet(a.sft)
    texts = pd.concat([sft["prompt"], sft["response"], pairs["prompt"], pairs["chosen"], pairs["rejected"]])
    model, tokenizer = build_base(a.params, texts.drop_duplicates().tolist())
    log.info("base model: %s, %.2fM parameters, vocabulary %d", a.params["name_or_path"],
             sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer))
    _save_checkpoint(model, tokenizer, a.out, io.provenance("base", a.params, {"pairs": a.pairs, "sft": a.sft}))


def cmd_split(a) -> None:
    p = a.params
    pairs = io.read_parquet(a.pairs)
    tokenizer = load_tokenizer(a.base)
    n_tokens = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"]) + 2  # noqa: E731 (+BOS/EOS)
    pairs, n_long = splits.filter_length(pairs, n_tokens, p["max_length"])
    log.info("dropped %d pairs longer than max_length=%d tokens; %d remain", n_long, p["max_length"], len(pairs))
    tokenize = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs["edit_distance"] = splits.pair_edit_distances(pairs, tokenize, p["edit_distance"])
    parts, thresholds = splits.assign_splits(pairs, p["quantile"])
    log.info("thresholds: %s", thresholds)
    prov = io.provenance("split", p, {"pairs": a.pairs, "base": a.base})
    for name, df in parts.items():
        io.write_parquet(df, Path(a.out_dir) / f"{name}.parquet", {**prov, "thresholds": thresholds,
                                                                  "dropped_too_long": n_long})
    table = splits.table5(parts)
    log.info("Table 5:\n%s", table.to_string(index=False))
    io.write_csv(table, a.out_table5, {**prov, "thresholds": thresholds})


# --------------------------------------------------------------------------- training
def cmd_train(a) -> None:
    p = a.params
    objective = objectives.build(a.objective, p)
    cfg = TrainConfig.from_params(p)
    acc = make_accelerator(cfg)  # before any model: sets up the process group under a launcher
    tokenizer = load_tokenizer(a.init)
    # fp32 master weights whatever train.dtype says (it is the compute dtype: autocast / DeepSpeed bf16)
    if objective.reward_head:
        model = LMWithRewardHead.from_pretrained(a.init, head_seed=p.get("head_seed", 0))
    else:
        model = load_causal_lm(a.init)
    data = io.read_parquet(a.data)
    for table in a.tables:
        data = _join_table(data, table, objective.columns)
    if objective.paired:
        train_rows, val_rows = data[data["split"] == "train"], data[data["split"] == "validation"]
    else:
        train_rows, val_rows = data, data.iloc[:0]
    to_examples = lambda df: _examples(df, tokenizer, objective, p)  # noqa: E731
    train_ex = to_examples(train_rows)
    if not train_ex:
        raise ValueError(f"{a.data}: no training rows")
    # a resume state is only valid for the very same inputs (content, not just paths)
    run_key = {"objective": a.objective, "params": p,
               "inputs": {path: io.file_hash(path) for path in (a.init, a.data, *a.tables)}}
    history = train(model, train_ex, objective, cfg, tokenizer.pad_token_id, a.resume, run_key, acc)
    if not acc.is_main_process:  # rank 0 alone evaluates and writes, after every rank has finished
        return
    model = acc.unwrap_model(model)
    val = {}
    if len(val_rows):
        val = evaluate(model, to_examples(val_rows), objective, tokenizer.pad_token_id, p["eval_batch_size"])
        log.info("validation: %s", " ".join(f"{k}={v:.4f}" for k, v in val.items()))
    if a.objective == "oracle" and "synthetic_labels" in p:
        val["bayes_optimal_acc"] = _bayes_optimal(val_rows, p["synthetic_labels"])
        log.info("Bayes-optimal validation pair accuracy under the synthetic labeler: %.4f",
                 val["bayes_optimal_acc"])
    inputs = {"init": a.init, "data": a.data, **{f"table{i}": t for i, t in enumerate(a.tables)}}
    prov = {**io.provenance(f"train/{a.objective}", p, inputs), "validation": val,
            "train_examples": len(train_ex)}
    _save_checkpoint(model, tokenizer, a.out, prov, metrics=pd.DataFrame(history))


def _examples(df: pd.DataFrame, tokenizer, objective, p: dict) -> list[Example]:
    enc = lambda prompt, resp: encode(tokenizer, prompt, resp, p["max_length"], p.get("train_on_prompt", False))  # noqa: E731
    if not objective.paired:
        return [Example([enc(r.prompt, r.response)]) for r in df.itertuples()]
    cols = list(objective.columns)
    return [Example([enc(r["prompt"], r["chosen"]), enc(r["prompt"], r["rejected"])], {c: float(r[c]) for c in cols})
            for r in df[["prompt", "chosen", "rejected", *cols]].to_dict("records")]


def _join_table(data: pd.DataFrame, table_path: str, needed: tuple[str, ...]) -> pd.DataFrame:
    table = io.read_parquet(table_path)
    cols = [c for c in table.columns if c in needed]
    merged = data.merge(table[["pair_id", *cols]], on="pair_id", how="left", validate="one_to_one")
    missing = merged[cols].isna().any(axis=1)
    if missing.any():
        raise ValueError(f"{table_path}: no values for {int(missing.sum())} pairs, e.g. pair_id "
                         f"{merged.loc[missing, 'pair_id'].iloc[0]}; rebuild the table")
    return merged


def _bayes_optimal(val_rows: pd.DataFrame, labels: dict) -> float:
    r_w = gold.gold_rewards(val_rows["document"], val_rows["chosen"], labels["gold"])
    r_l = gold.gold_rewards(val_rows["document"], val_rows["rejected"], labels["gold"])
    return gold.bayes_optimal_accuracy(r_w, r_l, labels["label_temperature"])


def _save_checkpoint(model, tokenizer, out: str, prov: dict, metrics: pd.DataFrame | None = None) -> None:
    with io.atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if metrics is not None:
            io.write_parquet(metrics, tmp / "metrics.parquet", prov)
        io.write_json(prov, tmp / io.MANIFEST)


# --------------------------------------------------------------------------- tables, generation, scoring
def cmd_table(a) -> None:
    """Per pair, a value of each model for chosen and rejected: ``reward`` or ``logp``."""
    pairs = io.read_parquet(a.pairs)
    table = pairs[["pair_id"]].copy()
    inputs = {"pairs": a.pairs}
    for spec in a.model:
        prefix, path = spec.split("=", 1)
        inputs[prefix] = path
        model = LMWithRewardHead.from_pretrained(path) if a.value == "reward" else load_causal_lm(path)
        model, tokenizer = for_inference(model, a.params.get("dtype", "float32")), load_tokenizer(path)
        for side in ("chosen", "rejected"):
            out = score(model, tokenizer, pairs["prompt"].tolist(), pairs[side].tolist(),
                        a.params["max_length"], a.params["batch_size"], logps=a.value == "logp")
            table[f"{prefix}_{side}"] = out[a.value]
        log.info("%s: mean chosen %.4f, mean rejected %.4f", prefix, table[f"{prefix}_chosen"].mean(),
                 table[f"{prefix}_rejected"].mean())
        del model
    io.write_parquet(table, a.out, io.provenance("table", {**a.params, "value": a.value}, inputs))


def cmd_gold_table(a) -> None:
    """The synthetic world's gold reward of every chosen and rejected response (a diagnostic
    teacher for DRDO: what distillation does with a perfect Oracle)."""
    pairs = io.read_parquet(a.pairs)
    table = pairs[["pair_id"]].assign(
        gold_chosen=gold.gold_rewards(pairs["document"], pairs["chosen"], a.params["gold"]),
        gold_rejected=gold.gold_rewards(pairs["document"], pairs["rejected"], a.params["gold"]))
    io.write_parquet(table, a.out, io.provenance("gold_table", a.params, {"pairs": a.pairs}))


def cmd_generate(a) -> None:
    p = a.params
    prompts = io.read_parquet(a.prompts)
    model, tokenizer = for_inference(load_causal_lm(a.policy), p.get("dtype", "float32")), load_tokenizer(a.policy)
    gen = generate(model, tokenizer, prompts, p["temperatures"], p["top_p"], p["max_new_tokens"],
                   p["max_prompt_length"], p["batch_size"], p["seed"])
    log.info("%d generations, %.1f%% ended with EOS, mean %.1f tokens", len(gen), 100 * gen["finished"].mean(),
             gen["n_tokens"].mean())
    io.write_parquet(gen, a.out, io.provenance("generate", p, {"policy": a.policy, "prompts": a.prompts}))


def cmd_score(a) -> None:
    """Oracle and gold reward of each generation (or of the reference summaries)."""
    prompts = io.read_parquet(a.prompts)
    if a.generations:
        gen = io.read_parquet(a.generations).merge(prompts, on=["eval_set", "prompt_id"], validate="many_to_one")
    else:  # the human reference summaries, one per prompt
        gen = prompts.assign(response=prompts["reference"], temperature=np.nan)
    oracle = for_inference(LMWithRewardHead.from_pretrained(a.oracle), a.params.get("dtype", "float32"))
    out = score(oracle, load_tokenizer(a.oracle), gen["prompt"].tolist(), gen["response"].tolist(),
                a.params["max_length"], a.params["batch_size"], logps=False)
    scores = gen[["eval_set", "prompt_id", "temperature", "response"]].assign(
        policy=a.policy, split=a.split, oracle=out["reward"],
        gold=gold.gold_rewards(gen["document"], gen["response"], a.params["gold"]))
    for (eval_set, temp), g in scores.groupby(["eval_set", "temperature"], dropna=False):
        log.info("%s T=%s: oracle %.3f gold %.3f", eval_set, temp, g["oracle"].mean(), g["gold"].mean())
    inputs = {"prompts": a.prompts, "oracle": a.oracle, **({"generations": a.generations} if a.generations else {})}
    io.write_parquet(scores, a.out, io.provenance("score", a.params, inputs))


def cmd_winrates(a) -> None:
    p = a.params
    scores = pd.concat([io.read_parquet(f) for f in a.scores], ignore_index=True)
    table = winrate_table(scores, p["splits"], p["methods"], p["scorers"], p["n_boot"], p["seed"])
    io.write_csv(table, a.out, io.provenance("winrates", p, {Path(f).stem: f for f in a.scores}))
    log.info("wrote %d rows to %s", len(table), a.out)


def cmd_report(a) -> None:
    """Validation metrics of every trained model, one row per model, from their manifests."""
    rows = []
    for path in a.models:
        manifest = io.read_provenance(path)
        rows.append({"model": Path(path).name, "stage": manifest["stage"],
                     "train_examples": manifest.get("train_examples"), **manifest.get("validation", {})})
    table = pd.DataFrame(rows)
    log.info("validation metrics:\n%s", table.to_string(index=False))
    io.write_csv(table, a.out, io.provenance("report", {}, {Path(m).name: Path(m) / io.MANIFEST for m in a.models}))


# --------------------------------------------------------------------------- argument parsing
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="drdo", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--lineage", default=None, help="hash of the config and code upstream of the outputs")
    ap.add_argument("--expect-lineage", type=json.loads, default=None,
                    help="JSON {input: lineage}: refuse inputs made under another config or code")
    sub = ap.add_subparsers(dest="stage", required=True)

    def stage(name, fn, *args):
        sp = sub.add_parser(name)
        sp.add_argument("--params", type=json.loads, default={}, help="JSON config subset")
        for arg in args:
            sp.add_argument(*arg[:-1] if isinstance(arg[-1], dict) else arg,
                            **(arg[-1] if isinstance(arg[-1], dict) else {"required": True}))
        sp.set_defaults(fn=fn)

    stage("normalise", cmd_normalise, ("--comparisons",), ("--sft-train",), ("--sft-test",), ("--news",),
          ("--out-pairs",), ("--out-sft",), ("--out-eval",))
    stage("base", cmd_base, ("--pairs",), ("--sft",), ("--out",))
    stage("split", cmd_split, ("--pairs",), ("--base",), ("--out-dir",), ("--out-table5",))
    stage("train", cmd_train, ("--objective", {"required": True, "choices": objectives.OBJECTIVES}),
          ("--init",), ("--data",), ("--out",), ("--tables", {"nargs": "*", "default": []}),
          ("--resume", {"default": None}))
    stage("table", cmd_table, ("--pairs",), ("--model", {"action": "append", "required": True}),
          ("--value", {"required": True, "choices": ["reward", "logp"]}), ("--out",))
    stage("gold-table", cmd_gold_table, ("--pairs",), ("--out",))
    stage("generate", cmd_generate, ("--policy",), ("--prompts",), ("--out",))
    stage("score", cmd_score, ("--prompts",), ("--oracle",), ("--policy",), ("--split",), ("--out",),
          ("--generations", {"default": None}))
    stage("report", cmd_report, ("--models", {"nargs": "+", "required": True}), ("--out",))
    stage("winrates", cmd_winrates, ("--scores", {"nargs": "+", "required": True}), ("--out",))
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    a = _parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    io.LINEAGE = a.lineage
    if a.expect_lineage:
        io.check_lineage(a.expect_lineage)
    a.fn(a)
    return 0

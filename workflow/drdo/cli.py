"""Entry points of the workflow's stages: ``python -m drdo STAGE [options]``.

Each Snakemake rule calls one stage with its inputs, outputs and a JSON ``--params`` (the
config subset the job depends on). The same commands run under a launcher such as
``accelerate launch -m drdo train ...`` on GPUs. Every output is written atomically and
carries its provenance (``drdo.io``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import floatmode, gguf, gold, io
from .data import loaders, splits
from .winrates import judge_table, read_scores, winrate_table

if TYPE_CHECKING:
    from .trainer import Example

# torch, transformers and the modules that import them are imported by the stages that use them:
# every job pays the ~3 s import, and the data and aggregation stages need neither. Per stage,
# the modules whose imports bring in that stack (see preload).
TORCH_STAGES = {"base": ("base_model",), "base-gguf": ("modeling",), "split": ("batching", "modeling"),
                "train": ("trainer", "objectives"), "table": ("scoring",), "generate": ("generation",),
                "score": ("scoring",)}

log = logging.getLogger("drdo")


# --------------------------------------------------------------------------- data
RAW_SOURCES = ("comparisons", "sft_train", "sft_test", "news", "preferences", "alpaca_eval")
# The raw sources each data stage reads, per task: normalise the training data (pairs, SFT rows),
# eval-prompts the prompts the policies are evaluated on (UltraFeedback's held-out prompts are
# carved from the preferences by data.holdout, so both read those). Apart, so a change to which
# prompts are evaluated re-runs no training job.
TRAIN_SOURCES = {"tldr": RAW_SOURCES[:2], "ultrafeedback": RAW_SOURCES[4:5]}
EVAL_SOURCES = {"tldr": RAW_SOURCES[2:4], "ultrafeedback": RAW_SOURCES[4:]}


def _raw_source(a, name: str):
    """A local file (``--comparisons`` etc.) or the dataset spec under ``params.hub.<name>``."""
    path = getattr(a, name)
    if path:
        return path
    spec = a.params.get("hub", {}).get(name)
    if not spec:
        raise ValueError(f"no source for {name}: pass --{name.replace('_', '-')} or set data.hub.{name}")
    return spec


def _local_inputs(src: dict) -> dict:
    """The sources given as local files (hub specs are in the params)."""
    return {k: v for k, v in src.items() if not isinstance(v, dict)}


def cmd_normalise(a) -> None:
    """Raw data -> preference pairs and SFT rows (the eval prompts: cmd_eval_prompts)."""
    p = a.params
    task = p.get("task", "tldr")
    src = {name: _raw_source(a, name) for name in TRAIN_SOURCES[task]}
    if task == "ultrafeedback":
        pairs, sft, drops, sft_drops = _normalise_ultrafeedback(src, p)
    else:
        pairs, drops = loaders.load_comparisons(src["comparisons"])
        log.info("comparisons: kept %d pairs; dropped %s", len(pairs), drops)
        sft, sft_drops = loaders.load_sft(src["sft_train"])
        log.info("sft: kept %d rows; dropped %s", len(sft), sft_drops)
    prov = io.provenance("normalise", p, _local_inputs(src))
    io.write_parquet(pairs, a.out_pairs, {**prov, "drops": drops})
    io.write_parquet(sft, a.out_sft, {**prov, "drops": sft_drops})


def _normalise_ultrafeedback(src: dict, p: dict):
    """UltraFeedback pairs carved by prompt into train / validation / held-out test prompts (the
    held-out ones left out: cmd_eval_prompts samples them); SFT on the chosen responses of the
    train prompts (the paper's SFT data)."""
    rows, drops = loaders.load_preferences(src["preferences"], p["holdout"])
    parts = rows["split"].value_counts().to_dict()
    log.info("preferences: kept %d pairs (%s by prompt); dropped %s", len(rows), parts, drops)
    pairs = rows[rows["split"] != "test"].reset_index(drop=True)
    train_rows = pairs[pairs["split"] == "train"]  # (not `train`: codedeps would read the trainer's name)
    sft = train_rows[["prompt", "chosen", "document"]].rename(columns={"chosen": "response"})
    sft = sft.drop_duplicates(["prompt", "response"]).reset_index(drop=True)
    return pairs, sft, drops, {}


def cmd_eval_prompts(a) -> None:
    """Raw data -> the eval prompts: a seeded sample of each eval set (eval.*)."""
    p = a.params
    task = p.get("task", "tldr")
    src = {name: _raw_source(a, name) for name in EVAL_SOURCES[task]}
    if task == "ultrafeedback":
        evals = _ultrafeedback_eval_prompts(src, p)
    else:
        sft_test, test_drops = loaders.load_sft(src["sft_test"])
        news, news_drops = loaders.load_news(src["news"])
        log.info("eval sources: tldr %d (dropped %s), news %d (dropped %s)", len(sft_test), test_drops,
                 len(news), news_drops)
        evals = loaders.eval_prompts(sft_test, news, p["n_tldr"], p["n_news"], p["seed"])
    io.write_parquet(evals, a.out, io.provenance("eval_prompts", p, _local_inputs(src)))


def _ultrafeedback_eval_prompts(src: dict, p: dict) -> pd.DataFrame:
    """Eval sets ``ultrafeedback`` (the held-out prompts of data.holdout, reference: the chosen
    response) and ``alpaca_eval``."""
    rows, _ = loaders.load_preferences(src["preferences"], p["holdout"])
    alpaca, alpaca_drops = loaders.load_alpaca_eval(src["alpaca_eval"])
    heldout = loaders.heldout_prompts(rows)
    if heldout.empty:
        raise ValueError("no held-out UltraFeedback prompts: raise data.holdout.test")
    log.info("eval sources: ultrafeedback %d held-out prompts, alpaca_eval %d (dropped %s)", len(heldout),
             len(alpaca), alpaca_drops)
    return pd.concat([loaders.sample_eval_set(heldout, "ultrafeedback", p["n_ultrafeedback"], p["seed"]),
                      loaders.sample_eval_set(alpaca, "alpaca_eval", p["n_alpaca_eval"], p["seed"])],
                     ignore_index=True)


def cmd_base(a) -> None:
    from .base_model import build_base, hub_source

    pairs, sft = io.read_parquet(a.pairs), io.read_parquet(a.sft)
    texts = pd.concat([sft["prompt"], sft["response"], pairs["prompt"], pairs["chosen"], pairs["rejected"]])
    model, tokenizer = build_base(a.params, texts.drop_duplicates().tolist(), key=a.name_key)
    _set_chat_template(tokenizer, a.params)
    log.info("base model: %s, %.2fM parameters, vocabulary %d", a.params["name_or_path"],
             sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer))
    _save_checkpoint(model, tokenizer, a.out, {**io.provenance("base", a.params, {"pairs": a.pairs, "sft": a.sft}),
                                               **hub_source(a.params)})


def _set_chat_template(tokenizer, params: dict) -> None:
    """model.chat_template as a template file (its content is in the params): set on the base
    tokenizer, so every checkpoint after it carries the template."""
    if isinstance(params.get("chat_template"), str):
        tokenizer.chat_template = params["chat_template"]


def cmd_base_gguf(a) -> None:
    """The base model converted from a GGUF file (model.name_or_path: gguf:smollm2 or a .gguf path):
    dequantised, a plain Hugging Face checkpoint; the manifest records the file."""
    path = gguf.resolve(a.gguf, "model.name_or_path")
    model, tokenizer = gguf.load(path, a.params["dtype"])
    _set_chat_template(tokenizer, a.params)
    prov = {**io.provenance("base", a.params), "gguf": gguf.provenance(path)}
    log.info("base model: %s converted from %s (%s), %.2fM parameters, vocabulary %d", a.params["name_or_path"],
             path, prov["gguf"]["general_name"], sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer))
    _save_checkpoint(model, tokenizer, a.out, prov)


def _lengths(p: dict) -> dict:
    """The encode() keyword arguments every stage takes from the config's ``lengths``."""
    return {"max_prompt_length": p["max_prompt_length"], "chat": p.get("chat_template", False)}


def cmd_split(a) -> None:
    from .batching import encode
    from .modeling import load_tokenizer

    p = a.params
    pairs = io.read_parquet(a.pairs)
    tokenizer = load_tokenizer(a.base)

    def length(tok):
        def n_tokens(prompt: str, response: str, document: str) -> int:  # exactly the training tokens
            return len(encode(tok, prompt, response, None, document=document, **_lengths(p)).input_ids)
        return n_tokens

    pairs, n_long = splits.filter_length(pairs, length(tokenizer), p["max_length"])
    log.info("dropped %d pairs longer than max_length=%d tokens; %d remain", n_long, p["max_length"], len(pairs))
    if a.oracle_base:  # an Oracle on another base model (oracle.base) trains and scores with its own tokens
        pairs, n_oracle = splits.filter_length(pairs, length(load_tokenizer(a.oracle_base)), p["max_length"])
        log.info("dropped %d more pairs longer than max_length for the Oracle's tokenizer (%s); %d remain",
                 n_oracle, a.oracle_base, len(pairs))
        n_long += n_oracle
    tokenize = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs["edit_distance"] = splits.pair_edit_distances(pairs, tokenize, p["edit_distance"])
    parts, thresholds = splits.assign_splits(pairs, p["quantile"])
    if p.get("max_validation"):
        parts = splits.cap_validation(parts, p["max_validation"], p.get("seed", 0))
    log.info("thresholds: %s; validation pairs per split: %s", thresholds,
             {k: int((v["split"] == "validation").sum()) for k, v in parts.items()})
    prov = io.provenance("split", p, {"pairs": a.pairs, "base": a.base,
                                      **({"oracle_base": a.oracle_base} if a.oracle_base else {})})
    for name, df in parts.items():
        io.write_parquet(df, Path(a.out_dir) / f"{name}.parquet", {**prov, "thresholds": thresholds,
                                                                  "dropped_too_long": n_long})
    table = splits.table5(parts)
    log.info("Table 5:\n%s", table.to_string(index=False))
    io.write_csv(table, a.out_table5, {**prov, "thresholds": thresholds})


# --------------------------------------------------------------------------- training
def cmd_train(a) -> None:
    from . import objectives
    from .modeling import LMWithRewardHead, cast_parameters, load_causal_lm, load_tokenizer, pretrained_kwargs
    from . import trainer
    from .trainer import TrainConfig, evaluate, make_accelerator, train

    p = a.params
    if "save_every" in p:  # how often to keep a resume state is not in what the model depends on
        raise ValueError("--params: save_every is the --save-every option (the workflow's train.save_every)")
    objective = objectives.build(a.objective, p)
    cfg = TrainConfig.from_params({**p, "save_every": a.save_every})
    acc = make_accelerator(cfg)  # before any model: sets up the process group under a launcher
    tokenizer = load_tokenizer(a.init)
    # Paired objectives compare log-probs (with the reference's, or chosen with rejected):
    # dropout off, as TRL does. SFT keeps the model's dropout. Weights load in fp32 whatever
    # train.dtype says: they are the fp32 masters (the precision contract in drdo.trainer).
    dropout = not objective.paired
    if objective.reward_head:  # the Oracle, ensemble members and DRDO student start from SFT
        model = LMWithRewardHead.from_pretrained(a.init, new_head=True, head_seed=p.get("head_seed", 0),
                                                 dropout=dropout, **pretrained_kwargs(p))
    else:
        model = load_causal_lm(a.init, dropout=dropout, **pretrained_kwargs(p))
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
    # the SFT model (or base) and the tables must come from the library versions this job runs
    io.check_versions([a.init, *a.tables], a.version_mismatch, this_job=True)
    # a resume state is only valid for the very same inputs (content, not just paths) and the very
    # same job: its lineage holds the code it runs (a fixed loss must not continue the old one's steps)
    run_key = {"objective": a.objective, "params": p, "lineage": io.LINEAGE,
               "inputs": {path: io.file_hash(path) for path in (a.init, a.data, *a.tables)}}
    history = train(model, train_ex, objective, cfg, tokenizer.pad_token_id, a.resume, run_key, acc)
    if not acc.is_main_process:  # rank 0 alone evaluates and writes, after every rank has finished
        return
    # `model` itself was never wrapped (train() wraps a PackedForward around it), so there is
    # nothing to unwrap; accelerate's unwrap_model would import DeepSpeed (~2 s) to find out
    val = {}
    if len(val_rows):
        val = evaluate(model, to_examples(val_rows), objective, tokenizer.pad_token_id, p["eval_batch_size"],
                       dtype=cfg.dtype)  # under training's autocast
        log.info("validation: %s", " ".join(f"{k}={v:.4f}" for k, v in val.items()))
    if a.objective == "oracle" and "synthetic_labels" in p:
        val["bayes_optimal_acc"] = _bayes_optimal(val_rows, p["synthetic_labels"])
        log.info("Bayes-optimal validation pair accuracy under the synthetic labeler: %.4f",
                 val["bayes_optimal_acc"])
    inputs = {"init": a.init, "data": a.data, **{f"table{i}": t for i, t in enumerate(a.tables)}}
    prov = {**io.provenance(f"train/{a.objective}", p, inputs), "validation": val,
            "train_examples": len(train_ex), "save_dtype": cfg.save_dtype}
    _save_checkpoint(cast_parameters(model, cfg.save_dtype), tokenizer, a.out, prov, metrics=pd.DataFrame(history))
    trainer.remove_resume(a.resume)  # only now: until the model is written, the last saved step is work kept


def _examples(df: pd.DataFrame, tokenizer, objective, p: dict) -> list["Example"]:
    """Encoded rows; a row whose response cannot fit ``max_length`` is dropped (counted),
    never cut. Prompts over budget keep the document's head and the instruction."""
    from .batching import TooLong, encode
    from .trainer import Example

    def enc(r, side):
        return encode(tokenizer, r["prompt"], r[side], p["max_length"], p.get("train_on_prompt", False),
                      document=r.get("document"), **_lengths(p))

    sides = ["chosen", "rejected"] if objective.paired else ["response"]
    cols = list(objective.columns)
    out, too_long, cut = [], 0, 0
    for r in df.to_dict("records"):
        try:
            seqs = [enc(r, side) for side in sides]
        except TooLong:
            too_long += 1
            continue
        cut += any(s.prompt_cut for s in seqs)
        out.append(Example(seqs, {c: float(r[c]) for c in cols}))
    if too_long or cut:
        log.warning("%d of %d rows dropped: response longer than max_length=%d allows; %d prompts cut to fit",
                    too_long, len(df), p["max_length"], cut)
    return out


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
    """Per pair, a value of each model for chosen and rejected: ``reward`` or ``logp``.

    ``--pairs`` may name several split files: every pair any of them holds is scored once.
    """
    from .modeling import LMWithRewardHead, for_inference, load_causal_lm, load_tokenizer, pretrained_kwargs
    from .scoring import score_pairs

    pairs = _read_pairs(a.pairs)
    table = pairs[["pair_id"]].copy()
    inputs = _pairs_inputs(a.pairs)
    # one table of values from models made with, and run under, the same library versions
    io.check_versions([spec.split("=", 1)[1] for spec in a.model], a.version_mismatch, this_job=True)
    for spec in a.model:
        prefix, path = spec.split("=", 1)
        inputs[prefix] = path
        dtype = a.params.get("dtype", "float32")  # loaded in it: buffers keep from_pretrained's dtypes
        pretrained = pretrained_kwargs(a.params)
        model = (LMWithRewardHead.from_pretrained(path, dtype=dtype, **pretrained) if a.value == "reward"
                 else load_causal_lm(path, dtype, dropout=False, **pretrained))
        model, tokenizer = for_inference(model), load_tokenizer(path)
        sides = score_pairs(model, tokenizer, pairs["prompt"].tolist(), pairs["chosen"].tolist(),
                            pairs["rejected"].tolist(), a.params["max_length"], a.params["batch_size"],
                            documents=pairs["document"].tolist(), logps=a.value == "logp", **_score_lengths(a.params))
        if sides[0]["n_too_long"]:  # the split stage's filter uses the same encode(): never expected
            raise ValueError(f"{sides[0]['n_too_long']} pairs of {a.pairs} do not fit max_length="
                             f"{a.params['max_length']}; rebuild the splits with the same lengths")
        for side, out in zip(("chosen", "rejected"), sides):
            table[f"{prefix}_{side}"] = out[a.value]
        log.info("%s: mean chosen %.4f, mean rejected %.4f", prefix, table[f"{prefix}_chosen"].mean(),
                 table[f"{prefix}_rejected"].mean())
        del model
    io.write_parquet(table, a.out, io.provenance("table", {**a.params, "value": a.value}, inputs))


def _read_pairs(paths: list[str]) -> pd.DataFrame:
    """Every pair the split files hold, once each, in first-seen order."""
    pairs = pd.concat([io.read_parquet(f) for f in paths], ignore_index=True)
    return pairs.drop_duplicates("pair_id", ignore_index=True)


def _pairs_inputs(paths: list[str]) -> dict:
    return {f"pairs{i}" if i else "pairs": f for i, f in enumerate(paths)}


def _score_lengths(p: dict) -> dict:
    return {"max_prompt_length": p.get("max_prompt_length"), "chat": p.get("chat_template", False)}


def cmd_gold_table(a) -> None:
    """The synthetic world's gold reward of every chosen and rejected response (a diagnostic
    teacher for DRDO: what distillation does with a perfect Oracle)."""
    pairs = _read_pairs(a.pairs)
    table = pairs[["pair_id"]].assign(
        gold_chosen=gold.gold_rewards(pairs["document"], pairs["chosen"], a.params["gold"]),
        gold_rejected=gold.gold_rewards(pairs["document"], pairs["rejected"], a.params["gold"]))
    io.write_parquet(table, a.out, io.provenance("gold_table", a.params, _pairs_inputs(a.pairs)))


def cmd_generate(a) -> None:
    from .modeling import load_tokenizer

    p = a.params
    prompts = io.read_parquet(a.prompts)
    io.check_versions([a.policy], a.version_mismatch, this_job=True)
    tokenizer = load_tokenizer(a.policy)
    sampling = (p["temperatures"], p["top_p"], p["max_new_tokens"], p["max_prompt_length"], p["batch_size"], p["seed"])
    if p.get("backend", "loop") == "vllm":
        import torch

        from . import generation_vllm

        gen = generation_vllm.generate(a.policy, tokenizer, prompts, *sampling, chat=p.get("chat_template", False),
                                       dtype=p.get("dtype", "float32"), threads=torch.get_num_threads(),
                                       options=p.get("vllm"))
    else:
        from .generation import generate
        from .modeling import for_inference, load_causal_lm, pretrained_kwargs

        model = for_inference(load_causal_lm(a.policy, p.get("dtype", "float32"), **pretrained_kwargs(p)))
        gen = generate(model, tokenizer, prompts, *sampling, chat=p.get("chat_template", False))
    log.info("%d generations, %.1f%% ended with EOS, mean %.1f tokens", len(gen), 100 * gen["finished"].mean(),
             gen["n_tokens"].mean())
    io.write_parquet(gen, a.out, io.provenance("generate", p, {"policy": a.policy, "prompts": a.prompts}))


def cmd_score(a) -> None:
    """Oracle and gold reward of each generation (or of the reference summaries)."""
    from .modeling import LMWithRewardHead, for_inference, load_tokenizer, pretrained_kwargs
    from .scoring import score

    prompts = io.read_parquet(a.prompts)
    if a.generations:
        gen = io.read_parquet(a.generations).merge(prompts, on=["eval_set", "prompt_id"], validate="many_to_one")
    else:  # the human reference summaries, one per prompt
        gen = prompts.assign(response=prompts["reference"], temperature=np.nan)
    io.check_versions([a.oracle, *([a.generations] if a.generations else [])], a.version_mismatch, this_job=True)
    oracle = for_inference(LMWithRewardHead.from_pretrained(a.oracle, dtype=a.params.get("dtype", "float32"),
                                                            **pretrained_kwargs(a.params)))
    out = score(oracle, load_tokenizer(a.oracle), gen["prompt"].tolist(), gen["response"].tolist(),
                a.params["max_length"], a.params["batch_size"], documents=gen["document"].tolist(),
                logps=False, **_score_lengths(a.params))
    if out["n_too_long"]:
        log.warning("%d responses longer than max_length=%d allows: not scored (NaN), left out of the "
                    "win-rates", out["n_too_long"], a.params["max_length"])
    # finished: the generation ended with EOS (references always do); too_long: the Oracle could
    # not score it whole (its reward is NaN, and the win-rates leave that prompt out)
    finished = gen["finished"].astype(bool) if a.generations else True
    scores = gen[["eval_set", "prompt_id", "temperature", "response"]].assign(
        policy=a.policy, split=a.split, oracle=out["reward"], finished=finished, too_long=out["too_long"])
    if "gold" in a.params:  # the synthetic world's true reward; real text has none
        scores["gold"] = gold.gold_rewards(gen["document"], gen["response"], a.params["gold"])
    for (eval_set, temp), g in scores.groupby(["eval_set", "temperature"], dropna=False):
        log.info("%s T=%s: %s", eval_set, temp,
                 " ".join(f"{c} {g[c].mean():.3f}" for c in ("oracle", "gold") if c in g))
    inputs = {"prompts": a.prompts, "oracle": a.oracle, **({"generations": a.generations} if a.generations else {})}
    io.write_parquet(scores, a.out, io.provenance("score", a.params, inputs))


def cmd_winrates(a) -> None:
    p = a.params
    scores = read_scores(a.scores, p["scorers"])
    table = winrate_table(scores, p["splits"], p["methods"], p["scorers"], p["unfinished"])
    inputs = {Path(f).stem: f for f in a.scores}
    if a.judge:  # the LLM judge's rows (judge.enabled), same columns and interval
        table = pd.concat([table, judge_table(io.read_parquet(a.judge))], ignore_index=True)
        inputs["judge"] = a.judge
    io.write_csv(table, a.out, io.provenance("winrates", p, inputs))
    log.info("wrote %d rows to %s", len(table), a.out)


def cmd_judge(a) -> None:
    """LLM-judge verdicts on the selected comparisons (drdo.judge; imported here, only when used)."""
    from .judge import stage

    stage.run(a)


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
def cmd_show(a) -> None:
    """What an artifact holds and how it was made (``drdo.show``); no torch."""
    from .show import NotAnArtifact, main as show

    try:
        text = show(a.path, a.rows, a.json)
    except NotAnArtifact as e:
        raise SystemExit(f"drdo show: {e}") from None
    print(text)


def _parser() -> argparse.ArgumentParser:
    from .objective_names import ALIGN_METHODS, OBJECTIVES

    ap = argparse.ArgumentParser(prog="drdo", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--lineage", default=None, help="hash of the config and code upstream of the outputs")
    ap.add_argument("--expect-lineage", type=json.loads, default=None,
                    help="JSON {input: lineage}: refuse inputs made under another config or code")
    ap.add_argument("--version-mismatch", choices=["error", "warn"], default="error",
                    help="inputs made with other torch/transformers/accelerate/deepspeed versions: "
                         "an error, or a warning recorded in the provenance (config key version_mismatch)")
    sub = ap.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name, fn, help, *args):
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--params", type=json.loads, default={}, help="JSON config subset")
        for arg in args:
            sp.add_argument(*arg[:-1] if isinstance(arg[-1], dict) else arg,
                            **(arg[-1] if isinstance(arg[-1], dict) else {"required": True}))
        sp.set_defaults(fn=fn)

    stage("normalise", cmd_normalise, "raw data -> preference pairs, SFT rows",
          *((f"--{n.replace('_', '-')}", {"default": None}) for n in RAW_SOURCES),
          ("--out-pairs",), ("--out-sft",))
    stage("eval-prompts", cmd_eval_prompts, "raw data -> the eval prompts (a seeded sample of each eval set)",
          *((f"--{n.replace('_', '-')}", {"default": None}) for n in RAW_SOURCES), ("--out",))
    stage("base", cmd_base, "the starting model (tiny Llama or a pretrained one)",
          ("--pairs",), ("--sft",), ("--out",),
          ("--name-key", {"default": "model.name_or_path",
                          "help": "the config key that names the model, for errors (oracle.base for the Oracle's)"}))
    stage("base-gguf", cmd_base_gguf, "the starting model converted from a GGUF file", ("--gguf",), ("--out",))
    stage("split", cmd_split, "drop over-long pairs; splits all/hc_he/lc_le, Table 5",
          ("--pairs",), ("--base",), ("--out-dir",), ("--out-table5",), ("--oracle-base", {"default": None}))
    stage("train", cmd_train, "train SFT, the Oracle, an e-DPO RM or a policy",
          ("--objective", {"required": True, "choices": OBJECTIVES,
                           "help": f"what is trained: sft, oracle, rm (e-DPO ensemble member) or an alignment "
                                   f"method ({', '.join(ALIGN_METHODS)})"}),
          ("--init",), ("--data",), ("--out",), ("--tables", {"nargs": "*", "default": []}),
          ("--resume", {"default": None}),
          ("--save-every", {"type": int, "default": 0,
                            "help": "write a resume state under --resume every N optimizer steps (0: never)"}))
    stage("table", cmd_table, "per-pair rewards or log-probs of frozen models",
          ("--pairs", {"nargs": "+", "required": True}), ("--model", {"action": "append", "required": True}),
          ("--value", {"required": True, "choices": ["reward", "logp"],
                       "help": "reward: the reward head's value (Oracle, ensemble); logp: response log-prob (reference)"}),
          ("--out",))
    stage("gold-table", cmd_gold_table, "gold reward of every pair (synthetic world only)",
          ("--pairs", {"nargs": "+", "required": True}), ("--out",))
    stage("generate", cmd_generate, "sample a policy's responses at each temperature",
          ("--policy",), ("--prompts",), ("--out",))
    stage("score", cmd_score, "Oracle (and gold) reward of each generated response",
          ("--prompts",), ("--oracle",), ("--policy",), ("--split",), ("--out",), ("--generations", {"default": None}))
    stage("report", cmd_report, "validation metrics of trained models (validation.csv)",
          ("--models", {"nargs": "+", "required": True}), ("--out",))
    stage("winrates", cmd_winrates, "win-rates with score intervals (winrates.csv)",
          ("--scores", {"nargs": "+", "required": True}), ("--out",), ("--judge", {"default": None}))
    stage("judge", cmd_judge, "LLM-judge verdicts on the selected comparisons",
          ("--scores", {"nargs": "+", "required": True}), ("--prompts",),
          ("--templates", {"nargs": "+", "required": True}), ("--cache",), ("--out-verdicts",), ("--out-report",))
    show = sub.add_parser("show", help="look inside a table or model, with its provenance",
                          description="What a Parquet or CSV table or a model directory holds, and its provenance.")
    show.add_argument("path", help="a .parquet or .csv file, or a model directory (with manifest.json)")
    show.add_argument("--rows", type=int, default=5, help="first rows shown (default 5)")
    show.add_argument("--json", action="store_true", help="one JSON object with fixed keys, for scripts")
    show.set_defaults(fn=cmd_show)
    return ap


def preload(stage: str) -> None:
    """Import a torch stage's modules with Python's cyclic GC paused, then freeze what they made.

    For a job's own process only (``python -m drdo``): torch, transformers and accelerate create
    300,000-600,000 objects while importing, and the collections they trigger find nothing to
    free. The collector took 1.0-1.5 s of each align, generate and score job before (dev machine,
    ``gc.callbacks``). Frozen, the imported objects are also skipped by every later collection; the
    GC itself runs as usual for the job's work.
    """
    gc.disable()
    try:
        for name in TORCH_STAGES.get(stage, ()):
            importlib.import_module(f"{__package__}.{name}")
    finally:
        gc.freeze()
        gc.enable()


def main(argv: list[str] | None = None, fresh_process: bool = False) -> int:
    """Run one stage. ``fresh_process``: this process exists for the stage (preload applies)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    a = _parser().parse_args(argv)
    if fresh_process:
        preload(a.stage)
        if a.stage in TORCH_STAGES:  # before torch starts its threads, so each one inherits it
            floatmode.flush_subnormals()
    if a.threads and a.stage in TORCH_STAGES:
        import torch

        torch.set_num_threads(a.threads)
    io.LINEAGE, io.VERSION_MISMATCH = a.lineage, None
    if a.expect_lineage:
        io.check_lineage(a.expect_lineage, a.version_mismatch)
    a.fn(a)
    return 0

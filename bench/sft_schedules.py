"""SFT schedules compared on a finished run: held-out NLL, and what the SFT policy generates.

For each schedule (JSON overrides of the run's own SFT params, e.g. ``'{"max_steps": 700}'``),
train SFT from the run's base model on its SFT rows with the workflow's own stage
(``python -m drdo train --objective sft``), then report:

- ``nll_<eval set>``: mean NLL per response token of the eval prompts' reference summaries
  (``tldr``: held-out posts, in domain; ``news``: out of distribution), dropout off;
- ``eos``: the share of generations that ended with EOS, ``len``: their mean length in tokens;
- ``gold_<eval set>`` / ``oracle_<eval set>``: the mean gold and Oracle reward of the generations
  at ``--temperature`` (the run's own generate and score params, and its Oracle);
- ``sft_s``: the training job's wall time on ``--sft-threads`` threads.

Thread counts default to the embedded default's (``threads.sft: 2``, 1 for the other stages), so
the schedule that changes nothing (``'{}'``) reproduces the run's SFT policy, its generations and
their scores (same code, same machine; ``tests/test_workflow.py`` checks this).

    PYTHONPATH=workflow python bench/sft_schedules.py --run results '{}' '{"max_steps": 700, "lr": 0.004}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from drdo import cli, io, objectives
from drdo.modeling import load_causal_lm, load_tokenizer
from drdo.trainer import evaluate
from stages import run_stage


def heldout_nll(model_dir: Path, prompts: Path, params: dict) -> dict[str, float]:
    objective = objectives.build("sft", params)
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dropout=False).eval()
    rows = io.read_parquet(prompts).rename(columns={"reference": "response"})
    out = {}
    for eval_set, group in rows.groupby("eval_set"):
        examples = cli._examples(group, tokenizer, objective, params)
        out[f"nll_{eval_set}"] = evaluate(model, examples, objective, tokenizer.pad_token_id,
                                          params["eval_batch_size"], dtype=params.get("dtype", "float32"))["nll"]
    return out


def measure(run: Path, overrides: dict, work: Path, sft_threads: int, threads: int, temperature: float) -> dict:
    params = {**io.read_provenance(run / "models/sft")["config"], **overrides}
    gen_params = io.read_provenance(run / "generations/sft.parquet")["config"]
    score_params = io.read_provenance(run / "scores/sft.parquet")["config"]
    prompts = run / "data/eval_prompts.parquet"
    sft, gens, scores = work / "sft", work / "generations.parquet", work / "scores.parquet"
    result = {"schedule": json.dumps(overrides, sort_keys=True)}
    train = ["train", "--objective", "sft", "--params", json.dumps(params), "--init", str(run / "models/base"),
             "--data", str(run / "data/sft.parquet"), "--out", str(sft)]
    result["sft_s"] = round(run_stage(sft_threads, train, work / "sft.log"), 1)
    result |= {k: round(v, 4) for k, v in heldout_nll(sft, prompts, params).items()}
    run_stage(threads, ["generate", "--params", json.dumps(gen_params), "--policy", str(sft),
                        "--prompts", str(prompts), "--out", str(gens)], work / "generate.log")
    run_stage(threads, ["score", "--params", json.dumps(score_params), "--generations", str(gens),
                        "--prompts", str(prompts), "--oracle", str(run / "models/oracle"), "--policy", "sft",
                        "--split", "-", "--out", str(scores)], work / "score.log")
    g, s = io.read_parquet(gens), io.read_parquet(scores)
    result |= {"eos": round(float(g["finished"].mean()), 3), "len": round(float(g["n_tokens"].mean()), 1)}
    at_t = s[s["temperature"] == temperature]
    for eval_set, group in at_t.groupby("eval_set"):
        result[f"gold_{eval_set}"] = round(float(group["gold"].mean()), 3)
        result[f"oracle_{eval_set}"] = round(float(group["oracle"].mean()), 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("schedules", nargs="+", help="JSON objects of SFT param overrides ('{}': the run's own)")
    ap.add_argument("--run", type=Path, default=Path("results"), help="a finished run's out_dir")
    ap.add_argument("--sft-threads", type=int, default=2, help="the SFT job's threads (config threads.sft)")
    ap.add_argument("--threads", type=int, default=1, help="generation and scoring threads (config threads.default)")
    ap.add_argument("--temperature", type=float, default=0.7)
    a = ap.parse_args()
    for schedule in a.schedules:
        with tempfile.TemporaryDirectory(prefix="sft_schedule_") as work:
            print(json.dumps(measure(a.run, json.loads(schedule), Path(work), a.sft_threads, a.threads,
                                     a.temperature)), flush=True)


if __name__ == "__main__":
    main()

"""The benchmarks run (on CPU, tiny) and report what they promise. The TRL runners of
bench/dpo_vs_trl.py need TRL (``pip install -e '.[bench]'``) and are skipped without it."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_its_cpu_form(tmp_path):
    """bench/gpu_check.py's CPU form (what a GPU run does, at a small size): every correctness
    check passes, every throughput row is there, and the JSON and markdown reports are written."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--size", "small",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["skipped"] == [] and result["checked"] == result["passed"] >= 14
    parts = [r["part"] for r in result["rows"]]
    assert parts.count("train") == 4 and parts.count("generate") == 3
    assert {r["backend"] for r in result["rows"] if r["part"] == "stages"} == {"cpu-bfloat16"}
    assert {r["check"] for r in result["rows"] if r["part"] == "kernels"} >= {"packed vs padded, sdpa",
                                                                            "packed vs padded, eager"}
    assert all(r["seq_tokens_per_s"] > 0 for r in result["rows"] if r["part"] == "train")
    assert proc.stdout.rstrip("\n").endswith((tmp_path / "gpu_check.md").read_text().rstrip("\n"))


def test_rule_times_reads_a_snakemake_log(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    import rule_times

    log = tmp_path / "run.snakemake.log"
    log.write_text("\n".join([
        "[Sun Nov 29 12:00:00 2026]", "localrule synthetic:", "    output: a", "    jobid: 2", "",
        "[Sun Nov 29 12:00:10 2026]", "Finished jobid: 2 (Rule: synthetic)",
        "[Sun Nov 29 12:00:10 2026]", "rule align:", "    jobid: 5", "    wildcards: method=drdo, split=all", "",
        "[Sun Nov 29 12:00:11 2026]", "rule align:", "    jobid: 6", "    wildcards: method=dpo, split=all", "",
        "[Sun Nov 29 12:01:10 2026]", "Finished jobid: 6 (Rule: align)",
        "[Sun Nov 29 12:01:40 2026]", "Finished jobid: 5 (Rule: align)", ""]))
    jobs = rule_times.parse(log.read_text().splitlines())
    assert {j["jobid"]: j["end"] - j["start"] for j in jobs} == {2: 10, 5: 90, 6: 59}
    rule_times.main(str(log))
    out = capsys.readouterr().out
    assert "| align | 2 | 149 | 90 |" in out and "100 s" in out
    assert out.index("| synthetic |  | 0 | 10 | 10 |") < out.index("| align | method=drdo, split=all | 10 | 100 | 90 |")


def test_cpu_reproducibility_counts_distinct_weights_and_strict_runs_agree(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    import cpu_reproducibility
    import torch
    from safetensors.torch import save_file

    made = []
    for name, w in (("a", [0.0, 1.0]), ("b", [0.0, 1.0]), ("c", [0.5, 1.0])):
        save_file({"w": torch.tensor(w)}, tmp_path / f"{name}.safetensors")
        made.append(tmp_path / f"{name}.safetensors")
    assert cpu_reproducibility.summarise(made) == {"runs": 3, "distinct": 2, "most_common": 2, "max_abs_diff": 0.5}
    # the launcher's strict mode: two training processes end with the same bytes
    result = cpu_reproducibility.main(["--runs", "2", "--threads", "2"])
    assert result["strict"]["runs"] == 2 and result["strict"]["distinct"] == 1
    assert result["default"]["runs"] == 2 and '"mode": "default"' in capsys.readouterr().out


def test_robust_losses_equal_trls():
    """cdpo / rdpo / ipo against TRL's own loss code (bench extra: skipped without TRL)."""
    pytest.importorskip("trl")
    sys.path.insert(0, str(REPO / "bench"))
    import robust_losses_vs_trl as cmp

    results = cmp.compare(n_pairs=8, seeds=2)
    assert {r["trl_loss_type"] for r in results} == {"robust", "ipo", "sigmoid"}
    assert all(r["max_abs_diff"] <= 1e-12 for r in results), results
    b = cmp._batch(8, 40, 0)  # the comparison can tell a different epsilon or tau apart
    assert abs(cmp.our_loss(b, "rdpo", {"beta": 0.1, "epsilon": 0.1}) - cmp.trl_loss(b, "robust", 0.1, 0.2)) > 1e-3
    assert abs(cmp.our_loss(b, "ipo", {"tau": 0.1, "logp_agg": "sum"}) - cmp.trl_loss(b, "ipo", 0.1, 0.0)) > 1e-3


def _bench(script: str, *args: str, timeout: int = 600) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def dpo_work(tmp_path_factory):
    """bench/dpo_vs_trl.py's prepared folder: the tiny default's base model and 12 encoded pairs."""
    work = tmp_path_factory.mktemp("dpo-vs-trl")
    _bench("dpo_vs_trl.py", "--model", "tiny", "--batch", "4", "--steps", "3", "--repeats", "0", "--work", str(work))
    return work


def _dpo_bench(work, runners: str) -> tuple[dict, dict]:
    rows = _bench("dpo_vs_trl.py", "--model", "tiny", "--batch", "4", "--steps", "3", "--repeats", "1", "--threads",
                  "1", "--runners", runners, "--work", str(work))
    runs, summary = {r["runner"]: r for r in rows[:-1]}, rows[-1]
    assert summary["summary"] == "dpo_vs_trl" and set(runs) == set(runners.split(","))
    return runs, summary["threads"]["1"]


def test_dpo_bench_our_runners(dpo_work):
    runs, summary = _dpo_bench(dpo_work, "drdo,drdo-drdo,drdo-bf16")
    assert runs["drdo"]["losses"][0] == pytest.approx(0.6931472, abs=1e-6)  # policy = reference at step 1
    assert all(len(r["losses"]) == 3 and len(r["step_cpu_s"]) == 2 and r["peak_rss_mb"] > 0 for r in runs.values())
    rows = {t["what"]: t for t in summary["targets"]}
    cost = rows["step time, drdo-drdo (DRDO) over drdo (DPO)"]
    assert cost["target"] == "<= 1.05" and set(cost["met"]) == {"wall", "cpu"} and cost["cpu"] > 0
    steps = {r: statistics.median(runs[r]["step_s"]) for r in ("drdo", "drdo-drdo")}
    assert cost["wall_per_repeat"] == [round(steps["drdo-drdo"] / steps["drdo"], 3)]  # one repeat: the median's pair
    assert rows["tokens/s, drdo-bf16 over drdo"]["cpu"] > 0


def test_dpo_bench_trl_runners(dpo_work):
    """TRL's compact head scores exactly the completion tokens (as on a GPU), its full head every
    position; both give our losses."""
    pytest.importorskip("trl")
    runs, summary = _dpo_bench(dpo_work, "drdo,trl,trl-compact,trl-bf16")
    data = json.loads((dpo_work / "data-float32.json").read_text())["pairs"]
    completions = sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in data)  # 12 pairs = 3 steps of 4
    assert runs["trl-compact"]["head_positions_per_step"] == completions / 3
    assert runs["trl"]["head_positions_per_step"] > 2 * completions / 3
    rows = {t["what"]: t for t in summary["targets"]}
    for trl in ("trl", "trl-compact"):
        assert rows[f"max loss difference, drdo vs {trl} (float32)"]["value"] < 1e-5
    assert rows["tokens/s, drdo over trl-compact"]["target"] == ">= 2.0"
    memory = rows["peak_rss_mb, drdo over trl-compact"]  # judged on the peak and on training's own increase
    assert memory["target"] == "<= 0.6" and set(memory["met"]) == {"peak", "train_increase"}
    assert 0 < memory["train_rss_increase_ratio"] and "target" not in rows["peak_rss_mb, drdo over trl"]
    assert rows["tokens/s, trl-bf16 over trl-compact"]["cpu"] > 0


def test_generation_engines_bench(dpo_work):
    rows = _bench("inference_speed.py", "--model-dir", str(dpo_work / "model"), "--data",
                  str(dpo_work / "data-float32.json"), "--generation-only", "--n", "4", "--gen-batches", "4,8",
                  "--max-new-tokens", "3", "--repeats", "1", "--temperatures", "0.5,0.9",
                  "--gen-engines", "loop,hf,hf-static,hf-static-compiled", "--compile-backend", "eager")
    summary = rows[-1]
    engines = ("loop", "hf", "hf-static", "hf-static-compiled")
    # a random base model never writes EOS: every row samples its 3 tokens, 4 prompts x 2 temperatures
    assert {(r["engine"], r["batch"]): r["new_tokens"] for r in rows if "engine" in r} == {
        (e, b): 24 for e in engines for b in (4, 8)}
    assert set(summary["warmup_s"]) == {"generate_hf-static-compiled_batch4", "generate_hf-static-compiled_batch8"}
    assert summary["summary"]["generate_loop_batch8/generate_hf-static-compiled_batch8"]["tokens_per_cpu_s_median"] > 0

"""The GPU throughput benchmark runs (on CPU, tiny) and reports what it promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert (tmp_path / "gpu_check.md").read_text() == proc.stdout[-len((tmp_path / "gpu_check.md").read_text()):]


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

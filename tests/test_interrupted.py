"""Stages run as processes, as a user meets them: every long stage killed with SIGKILL once it
has made progress, then run again (no output exists after the kill, nor a half-written file
beside it, and the rerun's outputs equal an uninterrupted run's byte for byte on CPU; the
judge's case is in test_judge.py); a resume state left by other code; a diverging loss."""

import json
import re
import logging
from pathlib import Path

import pandas as pd
import pytest

import stage_support as ss
from drdo.trainer import RESUME_META

pytestmark = pytest.mark.interrupted


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ss.build_world(tmp_path_factory.mktemp("world"))


def _past(k: int):
    """Ready once a progress line says at least ``k`` batches are done and more are left."""
    def ready(log: str) -> bool:
        return any(k <= int(done) < int(total) for done, total in re.findall(r" (\d+)/(\d+) batches", log))
    return ready


def _enlarged(path: Path, folder: Path, copies: int, key: str, text: str | None = None) -> Path:
    """``copies`` copies of a table's rows under new keys (and a numbered ``text``, where equal
    texts would be scored once): enough work that the stage is still running when the test's poll
    sees its progress (the world's 8 prompts score in 10 ms)."""
    table = pd.read_parquet(path)
    table = pd.concat([table.assign(**{key: table[key] + f"-{i}"}, **({text: table[text] + f" ({i})"} if text else {}))
                       for i in range(copies)], ignore_index=True)
    folder.mkdir(exist_ok=True)
    table.to_parquet(folder / path.name, index=False)
    return folder / path.name


def _interrupted_equals_whole(tmp_path, args, ready, out_name: str) -> None:
    """Run ``args(out)`` whole; then as a process killed once ``ready(its log)``, and again; compare."""
    whole = tmp_path / "whole" / out_name
    whole.parent.mkdir()
    ss.run(args(whole))
    out = tmp_path / "run" / out_name
    out.parent.mkdir()
    log = tmp_path / "killed.log"
    ss.kill_when(args(out), log, lambda: ready(log.read_text()))
    assert not out.exists(), "a killed stage left its output"
    ss.run(args(out))
    assert ss.files_of(out) == ss.files_of(whole)
    assert ss.stray_files(out.parent, out.name) == []


def test_training_killed_after_a_resume_save(world, tmp_path, caplog):
    params = json.dumps({**ss.DPO, "max_steps": 60})

    def args(out):
        return ["--lineage", "abc", "train", "--objective", "dpo", "--params", params, "--init", str(world["sft"]),
                "--data", str(world["splits"] / "all.parquet"), "--tables", str(world["ref"]), "--out", str(out),
                "--resume", str(out.parent / ".resume" / out.name), "--save-every", "4"]

    resume = tmp_path / "run" / ".resume" / "dpo-all"
    with caplog.at_level(logging.INFO, logger="drdo"):
        _interrupted_equals_whole(tmp_path, args, lambda log: (resume / RESUME_META).exists(), "dpo-all")
    assert "resumed from" in caplog.text  # it continued, and still equals the uninterrupted run
    assert not resume.exists()  # the resume state is gone once the model is written


def test_table_killed_while_scoring(world, tmp_path):
    params = json.dumps({**ss.INFERENCE, "batch_size": 1})

    pairs = [_enlarged(world["splits"] / f"{s}.parquet", tmp_path / "pairs", 20, "pair_id")
             for s in ("all", "hc_he", "lc_le")]

    def args(out):
        return ["table", "--params", params, "--pairs", *map(str, pairs),
                "--model", f"ref_logp={world['sft']}", "--value", "logp", "--out", str(out)]

    _interrupted_equals_whole(tmp_path, args, _past(4), "reference_logps.parquet")


def test_generation_killed_midway(world, tmp_path):
    params = json.dumps({"temperatures": [0.5, 0.9], "top_p": 0.8, "batch_size": 2, "seed": 0, "dtype": "float32",
                         "max_prompt_length": ss.TOKENS["max_prompt_length"], "max_new_tokens": 24,
                         "chat_template": False})

    prompts = _enlarged(world["prompts"], tmp_path / "prompts", 16, "prompt_id")

    def args(out):
        return ["generate", "--params", params, "--policy", str(world["sft"]), "--prompts", str(prompts),
                "--out", str(out)]

    _interrupted_equals_whole(tmp_path, args, _past(1), "sft.parquet")


def test_scoring_killed_midway(world, tmp_path):
    params = json.dumps({**ss.INFERENCE, "batch_size": 1})

    prompts = _enlarged(world["prompts"], tmp_path / "prompts", 200, "prompt_id", "prompt")

    def args(out):  # the reference summaries: no generations needed
        return ["score", "--params", params, "--prompts", str(prompts), "--oracle", str(world["oracle"]),
                "--policy", "reference", "--split", "-", "--out", str(out)]

    _interrupted_equals_whole(tmp_path, args, _past(2), "reference.parquet")


# --------------------------------------------------------------------------- resume state and lineage
def _dpo_args(world, out, lineage, params=None, table=None, save_every=2):
    return ["--lineage", lineage, "train", "--objective", "dpo",
            "--params", json.dumps(params or {**ss.DPO, "max_steps": 6}),
            "--init", str(world["sft"]), "--data", str(world["splits"] / "all.parquet"),
            "--tables", str(table or world["ref"]), "--out", str(out), "--resume", str(out.parent / ".resume"),
            "--save-every", str(save_every)]


def test_resume_state_of_another_lineage_is_not_continued(world, tmp_path, monkeypatch, caplog):
    """A job killed after a resume save, then its code fixed (a new lineage, same inputs and params):
    the rerun starts afresh instead of continuing the steps trained by the old code."""
    import drdo.trainer

    with monkeypatch.context() as m:  # a state left behind, as by a job killed after its step-4 save
        m.setattr(drdo.trainer, "remove_resume", lambda path: None)
        ss.run(_dpo_args(world, tmp_path / "old" / "dpo-all", "lineage-before-the-fix"))
    assert (tmp_path / "old" / ".resume" / RESUME_META).exists()
    out = tmp_path / "old" / "dpo-all-fixed"
    with caplog.at_level(logging.INFO, logger="drdo"):
        ss.run(_dpo_args(world, out, "lineage-after-the-fix"))
    assert "ignoring stale resume state" in caplog.text and "resumed from" not in caplog.text
    fresh = tmp_path / "fresh" / "dpo-all-fixed"
    ss.run(_dpo_args(world, fresh, "lineage-after-the-fix"))
    assert ss.files_of(out) == ss.files_of(fresh)


def test_a_job_failing_after_training_keeps_its_resume_state(world, tmp_path, monkeypatch, caplog):
    """Training done, the model's save fails (a full disk): no model, the state of the last saved
    step kept; the rerun continues from it and writes what an unbroken run writes."""
    import drdo.cli

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    out = tmp_path / "run" / "dpo-all"
    with monkeypatch.context() as m:
        m.setattr(drdo.cli, "_save_checkpoint", disk_full)
        with pytest.raises(OSError, match="No space left"):
            ss.run(_dpo_args(world, out, "x"))
    assert not out.exists()
    assert json.loads((out.parent / ".resume" / RESUME_META).read_text())["step"] == 4  # of 6, saved every 2
    with caplog.at_level(logging.INFO, logger="drdo"):
        ss.run(_dpo_args(world, out, "x"))
    assert "resuming at step 4/6" in caplog.text and not (out.parent / ".resume").exists()
    whole = tmp_path / "whole" / "dpo-all"
    ss.run(_dpo_args(world, whole, "x"))
    assert ss.files_of(out) == ss.files_of(whole)


# --------------------------------------------------------------------------- non-finite training
def _table_with_an_infinite_value(world, tmp_path):
    from drdo import io

    table = io.read_parquet(world["ref"])
    table.loc[0, "ref_logp_chosen"] = float("inf")  # passes the table join (not missing), poisons one pair
    path = tmp_path / "reference_logps.parquet"
    io.write_parquet(table, path, io.read_provenance(world["ref"]))
    return path


def test_a_non_finite_loss_stops_training_naming_the_step_and_writes_no_model(world, tmp_path):
    from drdo.trainer import NonFiniteError

    out = tmp_path / "dpo-all"
    params = {**ss.DPO, "max_steps": 12}
    with pytest.raises(NonFiniteError, match=r"non-finite loss or gradient at optimizer step \d+ of 12.*"
                                             r"train\.max_nonfinite_steps=0"):
        ss.run(_dpo_args(world, out, "x", params, _table_with_an_infinite_value(world, tmp_path), 0))
    assert not out.exists() and ss.stray_files(tmp_path, "dpo-all") == []


def test_allowed_non_finite_steps_are_skipped_and_counted(world, tmp_path):
    import pandas as pd
    from safetensors.torch import load_file

    out = tmp_path / "dpo-all"
    params = {**ss.DPO, "max_steps": 12, "max_nonfinite_steps": 12}
    ss.run(_dpo_args(world, out, "x", params, _table_with_an_infinite_value(world, tmp_path), 0))
    metrics = pd.read_parquet(out / "metrics.parquet")
    skipped = metrics["nonfinite_skipped"]
    assert skipped.iloc[-1] > 0 and skipped.is_monotonic_increasing
    assert all(t.isfinite().all() for t in load_file(out / "model.safetensors").values())


# --------------------------------------------------------------------------- library versions
def test_a_model_made_with_other_library_versions_is_refused_by_the_stage_that_runs_it(world, tmp_path):
    import shutil

    from drdo import io

    sft = tmp_path / "sft"
    shutil.copytree(world["sft"], sft)
    manifest = io.read_provenance(sft)
    io.write_json({**manifest, "versions": {**manifest["versions"], "torch": "1.0.0"}}, sft / io.MANIFEST)
    table = ["table", "--params", json.dumps({**ss.INFERENCE, "batch_size": 8}), "--pairs",
             str(world["splits"] / "all.parquet"), "--model", f"ref_logp={sft}", "--value", "logp",
             "--out", str(tmp_path / "ref.parquet")]
    with pytest.raises(ValueError, match=r"torch 1\.0\.0 \(.*sft\), .* \(this job\)"):
        ss.run(table)
    assert not (tmp_path / "ref.parquet").exists()
    generate = ["generate", "--params", json.dumps({
        "temperatures": [0.7], "top_p": 0.8, "batch_size": 8, "seed": 0, "dtype": "float32", "max_new_tokens": 8,
        "max_prompt_length": ss.TOKENS["max_prompt_length"], "chat_template": False}),
        "--policy", str(sft), "--prompts", str(world["prompts"]), "--out", str(tmp_path / "gen.parquet")]
    with pytest.raises(ValueError, match=r"torch 1\.0\.0"):
        ss.run(generate)
    ss.run(["--version-mismatch", "warn", *generate])  # allowed: made, and it says so
    assert io.read_provenance(tmp_path / "gen.parquet")["version_mismatch"]["torch"]["1.0.0"] == [str(sft)]

"""Atomic outputs and provenance records."""

import warnings

import pandas as pd
import pyarrow.parquet as pq
import pytest

from drdo import io


def test_atomic_file_is_absent_after_failure(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary left behind either


def test_atomic_directory_replaces_old_one(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with io.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.bin").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.bin"]


def test_parquet_provenance_round_trip(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("data")
    prov = io.provenance("stage", {"beta": 0.1}, {"src": src})
    io.write_parquet(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.parquet", prov)
    back = io.read_provenance(tmp_path / "t.parquet")
    assert back["config"] == {"beta": 0.1} and back["config_hash"] == io.config_hash({"beta": 0.1})
    assert back["inputs"]["src"]["sha256"] == io.file_hash(src)
    assert "torch" in back["versions"]
    assert io.read_parquet(tmp_path / "t.parquet")["a"].tolist() == [1, 2]


def test_config_hash_ignores_key_order():
    assert io.config_hash({"a": 1, "b": [1, 2]}) == io.config_hash({"b": [1, 2], "a": 1})
    assert io.config_hash({"a": 1}) != io.config_hash({"a": 2})


def test_csv_provenance_sidecar(tmp_path):
    io.write_csv(pd.DataFrame({"x": [0.123456]}), tmp_path / "w.csv", io.provenance("winrates", {"n_boot": 10}))
    assert (tmp_path / "w.csv").read_text() == "x\n0.1235\n"
    assert io.read_provenance(tmp_path / "w.csv")["config"] == {"n_boot": 10}


def test_a_failed_csv_write_never_leaves_a_csv_beside_other_provenance(tmp_path, monkeypatch):
    path = tmp_path / "w.csv"
    io.write_csv(pd.DataFrame({"x": [1.0]}), path, io.provenance("winrates", {"run": 1}))
    # the CSV fails to write: the old CSV and its provenance stay as they were
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        io.write_csv(pd.DataFrame({"x": [2.0]}), path, io.provenance("winrates", {"run": 2}))
    assert path.read_text() == "x\n1.0000\n" and io.read_provenance(path)["config"] == {"run": 1}
    monkeypatch.undo()
    # the sidecar fails to write after the new CSV is in: no provenance, not the old run's
    monkeypatch.setattr(io, "write_json", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        io.write_csv(pd.DataFrame({"x": [2.0]}), path, io.provenance("winrates", {"run": 2}))
    assert path.read_text() == "x\n2.0000\n" and not io.provenance_sidecar(path).exists()
    with pytest.raises(FileNotFoundError):
        io.read_provenance(path)


def test_read_parquet_puts_the_provenance_in_attrs(tmp_path):
    df = pd.DataFrame({"pair_id": [1, 2], "x": [0.5, 1.5]})
    io.write_parquet(df, tmp_path / "a.parquet", {"stage": "a", "config": {"k": [1, 2]}})
    got = io.read_parquet(tmp_path / "a.parquet")
    assert got.attrs["provenance"] == io.read_provenance(tmp_path / "a.parquet") == {"stage": "a", "config": {"k": [1, 2]}}
    pd.testing.assert_frame_equal(got, df)


def test_frames_with_provenance_concatenate_and_merge_without_warnings(tmp_path):
    """pandas keeps attrs through concat only when they are equal and drops them in merge: no
    error, no warning, and no stale provenance on the result."""
    for name, offset in (("a", 0), ("b", 10)):
        df = pd.DataFrame({"pair_id": [1, 2], "x": [offset + 0.5, offset + 1.5]})
        io.write_parquet(df, tmp_path / f"{name}.parquet", {"stage": name})
    a, b = io.read_parquet(tmp_path / "a.parquet"), io.read_parquet(tmp_path / "b.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = pd.concat([a, b], ignore_index=True)
        same = pd.concat([a, a], ignore_index=True)
        merged = a.merge(b[["pair_id", "x"]].rename(columns={"x": "y"}), on="pair_id", validate="one_to_one")
        groups = [g.attrs for _, g in both.groupby("pair_id")]
    assert both.attrs == {} and merged.attrs == {} and list(merged["y"]) == [10.5, 11.5]
    assert same.attrs["provenance"] == {"stage": "a"} and len(groups) == 2
    assert a.attrs["provenance"] == {"stage": "a"}  # the inputs are left as they were


def test_a_frame_written_again_carries_only_its_new_provenance(tmp_path):
    io.write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "a.parquet", {"stage": "a"})
    a = io.read_parquet(tmp_path / "a.parquet")
    io.write_parquet(a.assign(y=2), tmp_path / "b.parquet", {"stage": "b"})
    meta = pq.read_schema(tmp_path / "b.parquet").metadata
    assert b'"stage": "a"' not in meta[b"pandas"]  # pyarrow stores DataFrame.attrs there otherwise
    assert io.read_parquet(tmp_path / "b.parquet").attrs == {"provenance": {"stage": "b"}}
    assert a.attrs == {"provenance": {"stage": "a"}}


def test_a_killed_writes_leftover_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "models" / "sft"
    stray = tmp_path / "models" / ".sft.k1ll3d_x"  # what io.atomic_path leaves when its process is killed
    (stray / "sft").mkdir(parents=True)
    (stray / "sft" / "model.safetensors").write_text("half")
    keep = tmp_path / "models" / ".sft.notes"  # not a name atomic_path makes: left alone
    keep.mkdir()
    with io.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("whole")
    assert sorted(p.name for p in target.parent.iterdir()) == [".sft.notes", "sft"]


def _made_with(path, **versions):
    scores = pd.DataFrame({"policy": ["drdo"], "split": ["all"], "eval_set": ["tldr"], "prompt_id": ["p"],
                           "temperature": [0.7], "oracle": [1.0]})
    recorded = {"torch": "2.5.1", "transformers": "4.46.0", "accelerate": "1.1.0", "deepspeed": None, **versions}
    io.write_parquet(scores, path, {"lineage": "L", "versions": {k: v for k, v in recorded.items() if v != "-"}})
    return path


def test_inputs_of_different_library_versions_are_refused_by_name(tmp_path):
    a = _made_with(tmp_path / "a.parquet")
    b = _made_with(tmp_path / "b.parquet", transformers="4.47.1")
    assert io.check_versions([a, _made_with(tmp_path / "same.parquet")]) == {}
    with pytest.raises(ValueError, match=r"transformers 4\.46\.0 \(.*a\.parquet\), 4\.47\.1 \(.*b\.parquet\).*"
                                         r"version_mismatch: warn"):
        io.check_lineage({str(a): "L", str(b): "L"})
    c = _made_with(tmp_path / "c.parquet", deepspeed="0.15.4")  # installed for one, absent for the other
    with pytest.raises(ValueError, match=r"deepspeed None .* 0\.15\.4"):
        io.check_versions([a, c])
    old = _made_with(tmp_path / "old.parquet", accelerate="-")  # an older record without the key: not compared
    assert io.check_versions([a, old]) == {}


def test_this_jobs_own_versions_count_for_a_training_job(tmp_path):
    from importlib import metadata

    table = _made_with(tmp_path / "table.parquet", torch=metadata.version("torch") + "+other")
    with pytest.raises(ValueError, match=r"torch .*\(this job\)"):
        io.check_versions([table], this_job=True)
    outside = tmp_path / "init"  # a model made outside the workflow records nothing: not compared
    outside.mkdir()
    assert io.check_versions([outside], this_job=True) == {}


def test_version_mismatch_warn_goes_on_and_is_recorded(tmp_path, caplog):
    import json

    from drdo.cli import main

    a = _made_with(tmp_path / "drdo.parquet")
    b = _made_with(tmp_path / "dpo.parquet", torch="2.6.0")
    pairs = pd.DataFrame({"pair_id": ["x"], "document": ["d"], "chosen": ["c"], "rejected": ["r"]})
    io.write_parquet(pairs, tmp_path / "pairs.parquet", {})
    out = tmp_path / "out.parquet"
    stage = ["gold-table", "--params", json.dumps({"gold": {}}), "--pairs", str(tmp_path / "pairs.parquet"),
             "--out", str(out)]
    expect = ["--expect-lineage", json.dumps({str(a): "L", str(b): "L"})]
    with pytest.raises(ValueError, match="torch 2.5.1"):
        main(expect + stage)
    assert not out.exists()
    with caplog.at_level("WARNING"):
        main(expect + ["--version-mismatch", "warn"] + stage)
    assert "different library versions: torch 2.5.1" in caplog.text
    assert io.read_provenance(out)["version_mismatch"] == {"torch": {"2.5.1": [str(a)], "2.6.0": [str(b)]}}
    main(stage)  # the next stage run in this process starts clean
    assert "version_mismatch" not in io.read_provenance(out)

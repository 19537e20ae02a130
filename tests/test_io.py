"""Atomic outputs and provenance records."""

import pandas as pd
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

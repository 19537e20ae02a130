import logging
import os
import sys

from .cli import main

code = main(fresh_process=True)
if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
    # Every output is written and renamed into place by now, so skip the interpreter's teardown:
    # freeing torch's and transformers' modules takes ~1 s, and every job would pay it. (Ranks of
    # a distributed job exit normally, their process group taken down first, below.)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
# A rank takes its process group down before the interpreter's teardown: gloo's threads, still
# holding tensors while the interpreter finalises, can abort the process at exit ("terminate called
# without an active exception", a failed job although its work was written).
import torch.distributed as dist  # noqa: E402 - ranks only

if dist.is_available() and dist.is_initialized():
    dist.destroy_process_group()
sys.exit(code)

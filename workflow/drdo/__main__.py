import logging
import os
import sys

from .cli import main

code = main(fresh_process=True)
if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
    # Every output is written and renamed into place by now, so skip the interpreter's teardown:
    # freeing torch's and transformers' modules takes ~1 s, and every job would pay it. (Ranks of
    # a distributed job exit normally, so their process group shuts down cleanly.)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)

# code(stage): a hash of the package files a stage runs (workflow/drdo/codedeps.py), for job params.
# codedeps is loaded by path, from the tree this Snakefile sits in (not an installed drdo), and
# once per workflow parse: a study's 125 module instances (one `workflow` object) each include this
# file, and hashing the stages anew in each took most of the study's parse. Keyed by the workflow
# too, so a process that parses the workflow again (the Python API) hashes the code as it is then.
import importlib.util
import os
import sys


def _codedeps():
    path = os.path.join(REPO, "workflow", "drdo", "codedeps.py")
    name = f"drdo_codedeps:{path}:{id(workflow)}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        loaded.parsed_by = workflow  # held, so its id is not reused by a later parse's workflow
        sys.modules[name] = loaded
    return sys.modules[name]


def code(stage):
    return _codedeps().stage_hash(stage)

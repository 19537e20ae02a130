# Helper modules of this tree (workflow/drdo/*.py, no torch), for the Snakefiles:
#   code(stage): a hash of the package files a stage runs (codedeps.py), for job params;
#   check_schema(data, schema): the config / study schema check (configschema.py);
#   content(path): a hash of a local file's or folder's content (contenthash.py), for lineages.
# They are loaded by path, from the tree this Snakefile sits in (not an installed drdo), and
# once per workflow parse: a study's 125 module instances (one `workflow` object) each include this
# file, and hashing the stages or reading the schema anew in each took most of the study's parse.
# Keyed by the workflow too, so a process that parses the workflow again (the Python API) sees the
# files as they are then.
import importlib.util
import os
import sys


def tree_module(stem):
    path = os.path.join(REPO, "workflow", "drdo", f"{stem}.py")
    name = f"drdo_{stem}:{path}:{id(workflow)}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        loaded.parsed_by = workflow  # held, so its id is not reused by a later parse's workflow
        sys.modules[name] = loaded
    return sys.modules[name]


def code(stage):
    return tree_module("codedeps").stage_hash(stage)


def check_schema(data, schema):
    """Stop before any job if ``data`` does not match ``schema`` (a file of workflow/schemas/);
    the error names the key."""
    return tree_module("configschema").validate(data, os.path.join(REPO, "workflow", "schemas", schema))


def content(path):
    """sha256 of a local file or folder (None if absent); cached under .snakemake/ by size, mtime,
    ctime and inode, so a no-op rerun reads no file again."""
    hashes = tree_module("contenthash")
    if not hasattr(hashes, "cache"):
        hashes.cache = hashes.ContentHashes(os.path.join(".snakemake", "drdo", "content_hashes.json"))
    found = hashes.cache.tree(path)
    hashes.cache.save()
    return found

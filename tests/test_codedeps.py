"""Which package files each stage runs: the basis of code-change reruns (e2e: test_workflow)."""

import ast

import pytest
import test_workflow
from snakemake.exceptions import WorkflowError

from drdo import codedeps


def _names(stage):
    return {str(f.relative_to(codedeps.PKG)) for f in codedeps.stage_files(stage)}


def test_training_code_is_the_trainer_and_losses_not_generation():
    files = _names("cmd_train")
    assert {"trainer.py", "losses.py", "objectives.py", "modeling.py", "batching.py", "launch.py"} <= files
    assert not {"generation.py", "winrates.py", "synthetic.py", "cli.py"} & files


def test_generation_code_is_not_the_losses():
    files = _names("cmd_generate")
    assert "generation.py" in files and not {"losses.py", "trainer.py", "objectives.py"} & files


def test_hash_follows_the_stage_function_not_other_functions_of_cli():
    assert codedeps.stage_hash("cmd_train") != codedeps.stage_hash("cmd_generate")
    assert codedeps.stage_hash("synthetic") == codedeps.stage_hash("synthetic")  # stable
    assert "synthetic.py" in _names("synthetic") and "gold.py" in _names("synthetic")


def test_a_lazy_import_inside_the_stage_counts():
    files = _names("cmd_judge")  # cmd_judge imports drdo.judge only when it runs
    assert {"judge/stage.py", "judge/client.py"} <= files and "trainer.py" not in files


def test_a_local_named_like_an_import_is_not_that_import():
    fn = ast.parse("""
def cmd_x(a, score=None):
    train = a.rows[a.rows.split == "train"]
    def inner():
        return train, generate(a)
    return evaluate(train), [io for io in a.items], score
""").body[0]
    # `train`, `score` and `inner` are the function's own; `generate` and `evaluate` are read from
    # outside; a comprehension's variable (`io`) is counted, on the safe side (an extra rerun)
    assert codedeps._free_names(fn) == {"generate", "evaluate", "io"}


def test_function_sources_are_exactly_what_ast_get_source_segment_gives():
    # The stage hash covers these sources: a different slicing would re-run every stage.
    cli_source = (codedeps.PKG / "cli.py").read_text()
    tricky = ("def one(): return 'é'  # trailing comment\n"
              "def two(a,\r\n        b):\r\n    return a \\\n        + b  # after\r\n"
              "def three():\r    x = '\x0c'\r    return x\n"
              "async def four():\n    pass")
    for source in (cli_source, tricky):
        lines = codedeps._source_lines(source)
        nodes = ast.parse(source).body
        assert len(nodes) > 3
        for node in nodes:
            assert codedeps._segment(lines, node) == ast.get_source_segment(source, node)


def _sft_lineage(repo):
    """Parse ``repo``'s Snakefile through Snakemake's Python API; the SFT rule's lineage (its params
    carry the hash of the code it runs). ``_workflow`` is the API's parsed workflow (not public)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        parsed = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=repo / "Snakefile", workdir=repo)
        return str(parsed._workflow.get_rule("sft").params.lineage)


def test_a_second_parse_in_one_process_sees_edited_code_and_schema(tmp_path):
    """code.smk loads codedeps and configschema once per workflow parse, not once per process: a
    process that parses the workflow again (the Python API) hashes the code, and checks the
    config against the schema, as they are then."""
    repo = test_workflow._copy_of_repo(tmp_path / "repo")
    before = _sft_lineage(repo)
    assert _sft_lineage(repo) == before  # same code, same hash
    losses = repo / "workflow" / "drdo" / "losses.py"
    losses.write_text(losses.read_text() + "\n# an edit\n")
    assert _sft_lineage(repo) != before
    schema = repo / "workflow" / "schemas" / "config.schema.yaml"
    schema.write_text(schema.read_text().replace("pos_int: {type: integer, minimum: 1}",
                                                 "pos_int: {type: integer, minimum: 1, maximum: 16}"))
    with pytest.raises(WorkflowError, match=r"^config key [\w.]+: \d+ is greater than the maximum of 16$"):  # 32
        _sft_lineage(repo)

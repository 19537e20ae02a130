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


def _codedeps_of(pkg):
    """codedeps loaded from a copy of the package (its PKG is that copy; fresh caches)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"codedeps_copy_{id(pkg)}_{pkg.stat().st_mtime_ns}",
                                                  pkg / "codedeps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGES = ("cmd_normalise", "cmd_eval_prompts", "cmd_train", "cmd_generate", "cmd_score", "cmd_winrates", "cmd_judge")


def _hashes_after(tmp_path, edit):
    """Each stage's hash before and after ``edit(cli_source) -> new source`` on a copy of cli.py."""
    import shutil

    pkg = tmp_path / "drdo"
    shutil.copytree(codedeps.PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = {s: _codedeps_of(pkg).stage_hash(s) for s in STAGES}
    cli = pkg / "cli.py"
    source = cli.read_text()
    edited = edit(source)
    assert edited != source
    cli.write_text(edited)
    return before, {s: _codedeps_of(pkg).stage_hash(s) for s in STAGES}


@pytest.mark.parametrize("edit, stage", [
    (('TRAIN_SOURCES = {"tldr": RAW_SOURCES[:2]', 'TRAIN_SOURCES = {"tldr": RAW_SOURCES[:1]'), "cmd_normalise"),
    (('EVAL_SOURCES = {"tldr": RAW_SOURCES[2:4]', 'EVAL_SOURCES = {"tldr": RAW_SOURCES[2:3]'), "cmd_eval_prompts"),
])
def test_a_module_level_constant_counts_for_the_stages_that_read_it(tmp_path, edit, stage):
    before, after = _hashes_after(tmp_path, lambda s: s.replace(*edit))
    assert after[stage] != before[stage]  # the stage reads the constant
    assert {s: after[s] == before[s] for s in STAGES if s != stage} == {s: True for s in STAGES if s != stage}


def test_editing_a_stage_function_changes_that_stage_only(tmp_path):
    before, after = _hashes_after(tmp_path, lambda s: s.replace(
        "def cmd_generate(a) -> None:\n", "def cmd_generate(a) -> None:\n    a = a\n", 1))
    assert after["cmd_generate"] != before["cmd_generate"]
    assert {s for s in STAGES if after[s] != before[s]} == {"cmd_generate"}


def test_a_constant_read_through_another_constant_counts(tmp_path):
    before, after = _hashes_after(tmp_path, lambda s: s.replace(
        'RAW_SOURCES = ("comparisons", "sft_train"', 'RAW_SOURCES = ("sft_train", "comparisons"'))
    # TRAIN_SOURCES and EVAL_SOURCES are built from RAW_SOURCES
    assert after["cmd_normalise"] != before["cmd_normalise"] and after["cmd_eval_prompts"] != before["cmd_eval_prompts"]


def test_a_parser_default_counts_for_every_stage(tmp_path):
    before, after = _hashes_after(tmp_path, lambda s: s.replace(
        '("--resume", {"default": None})', '("--resume", {"default": "state"})'))
    assert all(after[s] != before[s] for s in STAGES)  # every stage runs main() and the parser


def test_a_module_level_statement_counts_for_every_stage(tmp_path):
    before, after = _hashes_after(tmp_path, lambda s: s.replace(
        'log = logging.getLogger("drdo")\n', 'log = logging.getLogger("drdo")\nnp.seterr(all="raise")\n'))
    assert all(after[s] != before[s] for s in STAGES)


def test_comments_and_the_docstring_of_cli_outside_functions_count_for_no_stage(tmp_path):
    def edit(s):
        s = s.replace('"""Entry points of the workflow', '"""Entry points (edited) of the workflow', 1)
        return s.replace("# --------------------------------------------------------------------------- data",
                         "# -------------------------------------------------------------------- data (edited)")
    before, after = _hashes_after(tmp_path, edit)
    assert after == before


def test_type_checking_imports_are_not_followed():
    assert "trainer.py" not in _names("cmd_generate") and "trainer.py" not in _names("cmd_normalise")

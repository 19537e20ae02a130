# A study: factors and levels from a YAML file, expanded into runs of the main workflow.
#   snakemake -s workflow/study.smk --cores all --config study=config/studies/drdo-gold.yaml
#
# Each world (every config key outside `align`: synthetic seed, label noise, ...) is one module
# instance of the main Snakefile; it builds the raw data, splits, SFT, Oracle, ensemble, tables
# and the SFT and reference scores once. Each run (a world x a training seed x a variant of the
# align keys) is a module instance that only aligns, generates and scores -- and only the methods
# whose own config differs from an earlier run of the same world: a DRDO-only factor (gamma,
# alpha, ...) trains DRDO alone and compares it with the baseline run's DPO and e-DPO.
# `study_table` writes study.csv; `study_figures` its figures (both in `snakemake --report`).
include: "rules/study_common.smk"


wildcard_constraints:
    scorer="oracle|gold|disagreement",


localrules:
    study_table,
    study_figures,


rule study_all:
    input:
        f"{ROOT}/study.csv",
        expand(f"{ROOT}/figures/study_{{scorer}}.png", scorer=STUDY_FIGURES),
        RUN_REPORT,
    default_target: True


rule study_table:
    input:
        scores=SCORE_FILES,
    output:
        table=report(f"{ROOT}/study.csv", caption="report/study_table.rst", category="Study"),
        runs=report(f"{ROOT}/study_runs.csv", caption="report/study_runs.rst", category="Study"),
        outcomes=f"{ROOT}/study_outcomes.parquet",
        provenance=f"{ROOT}/study.provenance.json",
    params:
        runs=json.dumps(MANIFEST, sort_keys=True),
        cfg=json.dumps(STUDY_PARAMS, sort_keys=True),
        expect=lambda wildcards: json.dumps(_score_lineages(), sort_keys=True),
        code=code("study"),
        versions=lambda wildcards, output: BASE["version_mismatch"],  # decides whether it runs, not what it makes
    log:
        f"{ROOT}/logs/study_table.log",
    conda:
        "../envs/drdo.yaml"
    shell:
        "python -m drdo.study --expect-lineage {params.expect:q} --version-mismatch {params.versions} --runs {params.runs:q} --params {params.cfg:q}"
        " --out {output.table} > {log} 2>&1"


rule study_figures:
    input:
        table=f"{ROOT}/study.csv",
    output:
        report(
            f"{ROOT}/figures/study_{{scorer}}.png",
            caption="report/study_figure.rst",
            category="Study",
            labels={"figure": "study, by factor level", "measure": "{scorer}"},
        ),
    params:
        temperature=STUDY_TEMPERATURE,
        code=code("plots"),
    log:
        f"{ROOT}/logs/study_figures_{{scorer}}.log",
    conda:
        "../envs/drdo.yaml"
    shell:
        "python -m drdo.plots study --table {input.table} --scorer {wildcards.scorer}"
        " --temperature {params.temperature} --out {output} > {log} 2>&1"

# Figures for `snakemake --report`: not part of the default target (rule `figures` builds them).
#   snakemake --cores all figures && snakemake --report report.html figures


rule training_curves:
    input:
        models=curve_models,
    output:
        report(
            f"{OUT}/figures/curves_{{group}}.png",
            caption="../report/curves.rst",
            category="Training curves",
            labels={"run": OUT, "models": "{group}"},
        ),
    params:
        expect=expected_lineage,
        versions=version_mismatch,
        code=code("plots"),
    wildcard_constraints:
        group="world|all|hc_he|lc_le",
    conda:
        ENV
    log:
        f"{OUT}/logs/figures/curves_{{group}}.log",
    shell:
        "python -m drdo.plots --expect-lineage {params.expect:q} --version-mismatch {params.versions} curves --models {input.models}"
        " --title 'training curves: {wildcards.group}' --out {output} > {log} 2>&1"


rule winrate_forest:
    input:
        winrates=f"{OUT}/winrates.csv",
    output:
        report(
            f"{OUT}/figures/forest_{{scorer}}.png",
            caption="../report/forest.rst",
            category="Win-rates",
            labels={"run": OUT, "scorer": "{scorer}"},
        ),
    params:
        code=code("plots"),
    wildcard_constraints:
        scorer="oracle|gold",
    conda:
        ENV
    log:
        f"{OUT}/logs/figures/forest_{{scorer}}.log",
    shell:
        "python -m drdo.plots forest --winrates {input.winrates} --scorer {wildcards.scorer} --out {output} > {log} 2>&1"


rule length_distribution:
    input:
        generations=[f"{run_dir(p)}/generations/{p}.parquet" for p in POLICIES],
    output:
        report(
            f"{OUT}/figures/lengths.png",
            caption="../report/lengths.rst",
            category="Generations",
            labels={"run": OUT, "figure": "response lengths"},
        ),
    params:
        expect=expected_lineage,
        versions=version_mismatch,
        code=code("plots"),
    conda:
        ENV
    log:
        f"{OUT}/logs/figures/lengths.log",
    shell:
        "python -m drdo.plots --expect-lineage {params.expect:q} --version-mismatch {params.versions} lengths --generations {input.generations}"
        " --out {output} > {log} 2>&1"


rule figures:
    localrule: True
    input:
        expand(f"{OUT}/figures/curves_{{group}}.png", group=CURVE_GROUPS),
        expand(f"{OUT}/figures/forest_{{scorer}}.png", scorer=config["winrates"]["scorers"]),
        f"{OUT}/figures/lengths.png",
        f"{UP}/data/table5.csv",
        f"{OUT}/validation.csv",

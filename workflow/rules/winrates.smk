rule winrates:
    localrule: True
    input:
        scores=[f"{run_dir(p)}/scores/{p}.parquet" for p in POLICIES + ["reference"]],
        **({"judge": JUDGE_VERDICTS} if JUDGE_ON else {}),
        # Not read: required so that `snakemake <out_dir>/winrates.csv` also builds every table the
        # results are read with (the models' validation metrics, Table 5).
        validation=f"{OUT}/validation.csv",
        table5=f"{UP}/data/table5.csv",
    output:
        table=report(f"{OUT}/winrates.csv", caption="../report/winrates.rst", category="Win-rates", labels={"run": OUT, "scorer": "table"}),
        provenance=f"{OUT}/winrates.provenance.json",
    params:
        cfg=as_json({**config["winrates"], "splits": SPLITS, "methods": METHODS}),
        # the lineages of the tables it is computed from
        expect=lambda wildcards, input: as_json({str(f): lineage_of(f) for f in [*input.scores, *([input.judge] if JUDGE_ON else [])]}),
        versions=version_mismatch,
        code=code("cmd_winrates"),
    log:
        f"{OUT}/logs/winrates.log",
    conda:
        ENV
    shell:
        "python -m drdo --expect-lineage {params.expect:q} --version-mismatch {params.versions} winrates --params {params.cfg:q}"
        " --scores {input.scores} --out {output.table}"
        + (" --judge {input.judge}" if JUDGE_ON else "")
        + " > {log} 2>&1"

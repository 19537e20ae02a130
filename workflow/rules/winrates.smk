rule winrates:
    localrule: True
    input:
        scores=[f"{run_dir(p)}/scores/{p}.parquet" for p in POLICIES + ["reference"]],
        **({"judge": JUDGE_VERDICTS} if JUDGE_ON else {}),
    output:
        table=report(f"{OUT}/winrates.csv", caption="../report/winrates.rst", category="Win-rates", labels={"run": OUT, "scorer": "table"}),
        provenance=f"{OUT}/winrates.provenance.json",
    params:
        cfg=as_json({**config["winrates"], "splits": SPLITS, "methods": METHODS}),
        expect=expected_lineage,
        versions=VERSION_MISMATCH,
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

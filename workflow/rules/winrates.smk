rule winrates:
    input:
        scores=expand(f"{OUT}/scores/{{policy}}.parquet", policy=POLICIES + ["reference"]),
    output:
        table=f"{OUT}/winrates.csv",
        provenance=f"{OUT}/winrates.provenance.json",
    params:
        cfg=as_json({**config["winrates"], "splits": SPLITS, "methods": METHODS}),
        expect=expected_lineage,
        code=code("cmd_winrates"),
    log:
        f"{OUT}/logs/winrates.log",
    conda:
        ENV
    shell:
        "python -m drdo --expect-lineage {params.expect:q} winrates --params {params.cfg:q}"
        " --scores {input.scores} --out {output.table} > {log} 2>&1"

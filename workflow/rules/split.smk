rule split:
    input:
        pairs=f"{OUT}/data/pairs.parquet",
        base=f"{OUT}/models/base",
    output:
        splits=expand(f"{OUT}/data/splits/{{split}}.parquet", split=["all", "hc_he", "lc_le"]),
        table5=f"{OUT}/data/table5.csv",
        table5_provenance=f"{OUT}/data/table5.provenance.json",
    params:
        cfg=SPLIT_PARAMS,
        lineage=lineage_split(),
        out_dir=lambda wildcards, output: os.path.dirname(output.splits[0]),
    log:
        f"{OUT}/logs/split.log",
    conda:
        ENV
    shell:
        "python -m drdo --lineage {params.lineage} split --params {params.cfg:q} --pairs {input.pairs}"
        " --base {input.base} --out-dir {params.out_dir} --out-table5 {output.table5} > {log} 2>&1"

rule split:
    localrule: True
    input:
        pairs=f"{UP}/data/pairs.parquet",
        base=f"{UP}/models/base",
        **({"oracle_base": f"{UP}/models/oracle_base"} if ORACLE_BASE else {}),
    output:
        splits=expand(f"{UP}/data/splits/{{split}}.parquet", split=["all", "hc_he", "lc_le"]),
        table5=report(f"{UP}/data/table5.csv", caption="../report/table5.rst", category="Tables", labels={"run": UP, "table": "Table 5"}),
        table5_provenance=f"{UP}/data/table5.provenance.json",
    params:
        cfg=SPLIT_PARAMS,
        lineage=lineage_split(),
        out_dir=lambda wildcards, output: os.path.dirname(output.splits[0]),
        oracle_base=lambda wildcards, input: f" --oracle-base {input.oracle_base}" if ORACLE_BASE else "",
    log:
        f"{UP}/logs/split.log",
    conda:
        ENV
    shell:
        "python -m drdo --lineage {params.lineage} split --params {params.cfg:q} --pairs {input.pairs}"
        " --base {input.base}{params.oracle_base} --out-dir {params.out_dir} --out-table5 {output.table5} > {log} 2>&1"

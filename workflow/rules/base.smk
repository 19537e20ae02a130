rule base_model:
    input:
        pairs=f"{OUT}/data/pairs.parquet",
        sft=f"{OUT}/data/sft.parquet",
    output:
        directory(f"{OUT}/models/base"),
    params:
        cfg=as_json(config["model"]),
        lineage=lineage_base(),
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/base_model.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} --lineage {params.lineage} base --params {params.cfg:q}"
        " --pairs {input.pairs} --sft {input.sft} --out {output} > {log} 2>&1"

if BASE_GGUF:  # a GGUF model.name_or_path: the file converted, no data needed

    rule base_model:
        input:
            gguf=BASE_GGUF,
        output:
            directory(f"{UP}/models/base"),
        params:
            cfg=as_json(BASE_PARAMS),
            lineage=lineage_base(),
        threads: config["threads"]["default"]
        log:
            f"{UP}/logs/base_model.log",
        conda:
            ENV
        shell:
            "python -m drdo --threads {threads} --lineage {params.lineage} base-gguf --params {params.cfg:q}"
            " --gguf {input.gguf:q} --out {output} > {log} 2>&1"

else:

    rule base_model:
        input:
            pairs=f"{UP}/data/pairs.parquet",
            sft=f"{UP}/data/sft.parquet",
        output:
            directory(f"{UP}/models/base"),
        params:
            cfg=as_json(BASE_PARAMS),
            lineage=lineage_base(),
        threads: config["threads"]["default"]
        log:
            f"{UP}/logs/base_model.log",
        conda:
            ENV
        shell:
            "python -m drdo --threads {threads} --lineage {params.lineage} base --params {params.cfg:q}"
            " --pairs {input.pairs} --sft {input.sft} --out {output} > {log} 2>&1"

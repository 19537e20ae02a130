rule sft:
    input:
        base=f"{OUT}/models/base",
        data=f"{OUT}/data/sft.parquet",
    output:
        directory(f"{OUT}/models/sft"),
    params:
        cfg=as_json(train_params("sft")),
        resume=f"{OUT}/.resume/sft.pt",
    threads: config["threads"]["sft"]
    log:
        f"{OUT}/logs/sft.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} train --objective sft --params {params.cfg:q}"
        " --init {input.base} --data {input.data} --out {output} --resume {params.resume} > {log} 2>&1"

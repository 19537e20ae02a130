rule oracle:
    input:
        sft=f"{OUT}/models/sft",
        data=f"{OUT}/data/splits/all.parquet",
    output:
        directory(f"{OUT}/models/oracle"),
    params:
        cfg=oracle_params(),
        resume=f"{OUT}/.resume/oracle.pt",
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/oracle.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} train --objective oracle --params {params.cfg:q}"
        " --init {input.sft} --data {input.data} --out {output} --resume {params.resume} > {log} 2>&1"

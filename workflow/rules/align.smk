rule align:
    input:
        sft=f"{OUT}/models/sft",
        data=f"{OUT}/data/splits/{{split}}.parquet",
        tables=method_tables,
    output:
        directory(f"{OUT}/models/{{method}}-{{split}}"),
    params:
        cfg=align_params,
        resume=lambda wildcards: f"{OUT}/.resume/{wildcards.method}-{wildcards.split}.pt",
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/align_{{method}}-{{split}}.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} train --objective {wildcards.method} --params {params.cfg:q}"
        " --init {input.sft} --data {input.data} --tables {input.tables} --out {output}"
        " --resume {params.resume} > {log} 2>&1"

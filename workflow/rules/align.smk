# Which precomputed tables each method reads: the only data difference between methods.
METHOD_TABLES = {
    "drdo": [f"{OUT}/tables/oracle_rewards.parquet"],
    "dpo": [f"{OUT}/tables/reference_logps.parquet"],
    "edpo": [f"{OUT}/tables/reference_logps.parquet", f"{OUT}/tables/ensemble_rewards.parquet"],
}


def align_params(wildcards):
    params = train_params("align.common", f"align.{wildcards.method}")
    if wildcards.method == "edpo":
        params["ensemble_size"] = config["ensemble"]["size"]
    return as_json(params)


rule align:
    input:
        sft=f"{OUT}/models/sft",
        data=f"{OUT}/data/splits/{{split}}.parquet",
        tables=lambda wildcards: METHOD_TABLES[wildcards.method],
    output:
        directory(f"{OUT}/models/{{method}}-{{split}}"),
    params:
        cfg=align_params,
        resume=lambda wildcards: f"{OUT}/.resume/{wildcards.method}-{wildcards.split}.pt",
    threads: config["threads"]
    log:
        f"{OUT}/logs/align_{{method}}-{{split}}.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} train --objective {wildcards.method} --params {params.cfg:q}"
        " --init {input.sft} --data {input.data} --tables {input.tables} --out {output}"
        " --resume {params.resume} > {log} 2>&1"

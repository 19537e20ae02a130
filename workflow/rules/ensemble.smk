rule reward_model:
    input:
        sft=f"{OUT}/models/sft",
        data=f"{OUT}/data/splits/all.parquet",
    output:
        directory(f"{OUT}/models/rm{{member}}"),
    params:
        cfg=member_params,
        resume=lambda wildcards: f"{OUT}/.resume/rm{wildcards.member}.pt",
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/reward_model_{{member}}.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} train --objective rm --params {params.cfg:q}"
        " --init {input.sft} --data {input.data} --out {output} --resume {params.resume} > {log} 2>&1"

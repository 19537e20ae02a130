rule reward_model:
    input:
        sft=f"{UP}/models/sft",
        data=f"{UP}/data/splits/all.parquet",
    output:
        directory(f"{UP}/models/rm{{member}}"),
    params:
        cfg=lambda wildcards: member_params(wildcards.member),
        versions=version_mismatch,
        lineage=lambda wildcards: lineage_rm(wildcards.member),
        resume=resume_args(RESUME_UP, lambda wildcards: f"rm{wildcards.member}", "ensemble"),
    threads: config["threads"]["default"]
    resources:
        gpu=res("reward_model", "gpu"),
        mem_mb=res("reward_model", "mem_mb"),
        runtime=res("reward_model", "runtime"),
    log:
        f"{UP}/logs/reward_model_{{member}}.log",
    conda:
        ENV
    shell:
        launch("reward_model") + " -- --lineage {params.lineage} --version-mismatch {params.versions} train --objective rm --params {params.cfg:q}"
        " --init {input.sft} --data {input.data} --out {output} {params.resume} > {log} 2>&1"

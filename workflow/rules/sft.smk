rule sft:
    input:
        base=f"{UP}/models/base",
        data=f"{UP}/data/sft.parquet",
    output:
        directory(f"{UP}/models/sft"),
    params:
        cfg=as_json(train_params("sft")),
        versions=version_mismatch,
        lineage=lineage_sft(),
        resume=resume_args(RESUME_UP, "sft", "sft"),
    threads: config["threads"]["sft"]
    resources:
        gpu=res("sft", "gpu"),
        mem_mb=res("sft", "mem_mb"),
        runtime=res("sft", "runtime"),
    log:
        f"{UP}/logs/sft.log",
    conda:
        ENV
    shell:
        launch("sft") + " -- --lineage {params.lineage} --version-mismatch {params.versions} train --objective sft --params {params.cfg:q}"
        " --init {input.base} --data {input.data} --out {output} {params.resume} > {log} 2>&1"

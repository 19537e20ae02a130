rule oracle:
    input:
        sft=f"{UP}/models/sft",
        data=f"{UP}/data/splits/all.parquet",
    output:
        directory(f"{UP}/models/oracle"),
    params:
        cfg=oracle_params(),
        lineage=lineage_oracle(),
        resume=f"{RESUME_UP}/oracle",
    threads: config["threads"]["default"]
    resources:
        gpu=res("oracle", "gpu"),
        mem_mb=res("oracle", "mem_mb"),
        runtime=res("oracle", "runtime"),
    log:
        f"{UP}/logs/oracle.log",
    conda:
        ENV
    shell:
        "python -m drdo.launch --processes {resources.gpu} --threads {threads} -- --lineage {params.lineage} train --objective oracle --params {params.cfg:q}"
        " --init {input.sft} --data {input.data} --out {output} --resume {params.resume} > {log} 2>&1"

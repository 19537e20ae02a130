rule oracle:
    input:
        init=oracle_init,
        data=f"{UP}/data/splits/all.parquet",
    output:
        directory(f"{UP}/models/oracle"),
    params:
        cfg=oracle_params(),
        versions=version_mismatch,
        lineage=lineage_oracle(),
        resume=resume_args(RESUME_UP, "oracle", "oracle"),
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
        launch("oracle") + " -- --lineage {params.lineage} --version-mismatch {params.versions} train --objective oracle --params {params.cfg:q}"
        " --init {input.init} --data {input.data} --out {output} {params.resume} > {log} 2>&1"


# Only with oracle.base: the Oracle's own starting model (e.g. OPT-1.3B under any policy), made
# by the base stage with the policy's prompt format (model.chat_template) set on its tokenizer.
rule oracle_base:
    input:
        pairs=f"{UP}/data/pairs.parquet",
        sft=f"{UP}/data/sft.parquet",
    output:
        directory(f"{UP}/models/oracle_base"),
    params:
        cfg=as_json(ORACLE_BASE_PARAMS),
        lineage=lineage_oracle_base(),
    threads: config["threads"]["default"]
    log:
        f"{UP}/logs/oracle_base.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} --lineage {params.lineage} base --params {params.cfg:q}"
        " --pairs {input.pairs} --sft {input.sft} --out {output} --name-key oracle.base > {log} 2>&1"

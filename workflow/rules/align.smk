rule align:
    input:
        sft=f"{UP}/models/sft",
        data=f"{UP}/data/splits/{{split}}.parquet",
        tables=method_tables,
    output:
        directory(f"{OUT}/models/{{method}}-{{split}}"),
    params:
        cfg=lambda wildcards: align_params(wildcards.method),
        objective=lambda wildcards: method_base(wildcards.method),
        versions=version_mismatch,
        lineage=lambda wildcards: lineage_policy(f"{wildcards.method}-{wildcards.split}"),
        resume=resume_args(RESUME, lambda wildcards: f"{wildcards.method}-{wildcards.split}", "align.common",
                           lambda wildcards: method_config(wildcards.method)),
    threads: config["threads"]["default"]
    resources:
        gpu=res("align", "gpu"),
        mem_mb=res("align", "mem_mb"),
        runtime=res("align", "runtime"),
    log:
        f"{OUT}/logs/align_{{method}}-{{split}}.log",
    conda:
        ENV
    shell:
        launch("align") + " -- --lineage {params.lineage} --version-mismatch {params.versions} train --objective {params.objective} --params {params.cfg:q}"
        " --init {input.sft} --data {input.data} --tables {input.tables} --out {output}"
        " {params.resume} > {log} 2>&1"

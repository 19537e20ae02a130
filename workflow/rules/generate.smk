rule generate:
    input:
        policy=lambda wildcards: f"{run_dir(wildcards.policy)}/models/{wildcards.policy}",
        prompts=f"{UP}/data/eval_prompts.parquet",
    output:
        f"{OUT}/generations/{{policy}}.parquet",
    params:
        cfg=GENERATE_PARAMS,
        versions=version_mismatch,
        lineage=lambda wildcards: lineage_generations(wildcards.policy),
    threads: config["threads"]["default"]
    resources:
        gpu=res("generate", "gpu"),
        mem_mb=res("generate", "mem_mb"),
        runtime=res("generate", "runtime"),
    log:
        f"{OUT}/logs/generate_{{policy}}.log",
    conda:
        ENV
    shell:
        launch("generate") + " -- --lineage {params.lineage} --version-mismatch {params.versions} generate --params {params.cfg:q} --policy {input.policy}"
        " --prompts {input.prompts} --out {output} > {log} 2>&1"

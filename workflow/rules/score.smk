rule score_policy:
    input:
        generations=f"{OUT}/generations/{{policy}}.parquet",
        prompts=f"{UP}/data/eval_prompts.parquet",
        oracle=f"{UP}/models/oracle",
    output:
        f"{OUT}/scores/{{policy}}.parquet",
    params:
        cfg=SCORE_PARAMS,
        versions=version_mismatch,
        lineage=lambda wildcards: lineage_scores(wildcards.policy),
        name=policy_method,
        split=policy_split,
    threads: config["threads"]["default"]
    resources:
        gpu=res("score_policy", "gpu"),
        mem_mb=res("score_policy", "mem_mb"),
        runtime=res("score_policy", "runtime"),
    log:
        f"{OUT}/logs/score_{{policy}}.log",
    conda:
        ENV
    shell:
        launch("score_policy") + " -- --lineage {params.lineage} --version-mismatch {params.versions} score --params {params.cfg:q}"
        " --generations {input.generations} --prompts {input.prompts} --oracle {input.oracle}"
        " --policy {params.name} --split {params.split} --out {output} > {log} 2>&1"


rule score_reference:
    input:
        prompts=f"{UP}/data/eval_prompts.parquet",
        oracle=f"{UP}/models/oracle",
    output:
        f"{UP}/scores/reference.parquet",
    params:
        cfg=SCORE_PARAMS,
        versions=version_mismatch,
        lineage=lineage_scores("reference"),
    threads: config["threads"]["default"]
    resources:
        gpu=res("score_reference", "gpu"),
        mem_mb=res("score_reference", "mem_mb"),
        runtime=res("score_reference", "runtime"),
    log:
        f"{UP}/logs/score_reference.log",
    conda:
        ENV
    shell:
        launch("score_reference") + " -- --lineage {params.lineage} --version-mismatch {params.versions} score --params {params.cfg:q}"
        " --prompts {input.prompts} --oracle {input.oracle} --policy reference --split - --out {output} > {log} 2>&1"

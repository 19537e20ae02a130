# The gold reward exists only in the synthetic world: real data gets no `gold` column.
SCORE_PARAMS = as_json({**config["score"], **TOKENS,
                        **({"gold": GOLD} if config["data"]["source"] == "synthetic" else {})})


rule score_policy:
    input:
        generations=f"{OUT}/generations/{{policy}}.parquet",
        prompts=f"{OUT}/data/eval_prompts.parquet",
        oracle=f"{OUT}/models/oracle",
    output:
        f"{OUT}/scores/{{policy}}.parquet",
    params:
        cfg=SCORE_PARAMS,
        name=policy_method,
        split=policy_split,
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/score_{{policy}}.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} score --params {params.cfg:q} --generations {input.generations}"
        " --prompts {input.prompts} --oracle {input.oracle} --policy {params.name} --split {params.split}"
        " --out {output} > {log} 2>&1"


rule score_reference:
    input:
        prompts=f"{OUT}/data/eval_prompts.parquet",
        oracle=f"{OUT}/models/oracle",
    output:
        f"{OUT}/scores/reference.parquet",
    params:
        cfg=SCORE_PARAMS,
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/score_reference.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} score --params {params.cfg:q} --prompts {input.prompts}"
        " --oracle {input.oracle} --policy reference --split - --out {output} > {log} 2>&1"

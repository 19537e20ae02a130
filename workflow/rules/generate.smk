rule generate:
    input:
        policy=f"{OUT}/models/{{policy}}",
        prompts=f"{OUT}/data/eval_prompts.parquet",
    output:
        f"{OUT}/generations/{{policy}}.parquet",
    params:
        cfg=as_json(config["generate"]),
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/generate_{{policy}}.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} generate --params {params.cfg:q} --policy {input.policy}"
        " --prompts {input.prompts} --out {output} > {log} 2>&1"

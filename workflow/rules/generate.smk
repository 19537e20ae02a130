rule generate:
    input:
        policy=f"{OUT}/models/{{policy}}",
        prompts=f"{OUT}/data/eval_prompts.parquet",
    output:
        f"{OUT}/generations/{{policy}}.parquet",
    params:
        cfg=as_json({**config["generate"], "max_prompt_length": LENGTHS["max_prompt_length"],
                     "max_new_tokens": LENGTHS["max_new_tokens"], "chat_template": TOKENS["chat_template"]}),
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/generate_{{policy}}.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} generate --params {params.cfg:q} --policy {input.policy}"
        " --prompts {input.prompts} --out {output} > {log} 2>&1"

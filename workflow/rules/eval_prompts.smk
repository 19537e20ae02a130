# The prompts every policy is evaluated on: a seeded sample of each eval set (eval.*), the only
# job that reads the eval keys (generation, scoring, the judge and the win-rates follow it).
rule eval_prompts:
    localrule: True
    input:
        unpack(raw_inputs("eval")),
    output:
        f"{UP}/data/eval_prompts.parquet",
    params:
        cfg=EVAL_PROMPTS_PARAMS,
        lineage=lineage_eval(),
        sources=source_args,
    log:
        f"{UP}/logs/eval_prompts.log",
    conda:
        ENV
    shell:
        "python -m drdo --lineage {params.lineage} eval-prompts --params {params.cfg:q} {params.sources}"
        " --out {output} > {log} 2>&1"

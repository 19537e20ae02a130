rule normalise:
    localrule: True
    input:
        unpack(raw_inputs),
    output:
        pairs=f"{UP}/data/pairs.parquet",
        sft=f"{UP}/data/sft.parquet",
        eval=f"{UP}/data/eval_prompts.parquet",
    params:
        cfg=NORMALISE_PARAMS,
        lineage=lineage_data(),
        sources=lambda wildcards, input: " ".join(f"--{k.replace('_', '-')} {shlex.quote(v)}" for k, v in input.items()),
    log:
        f"{UP}/logs/normalise.log",
    conda:
        ENV
    shell:
        "python -m drdo --lineage {params.lineage} normalise --params {params.cfg:q} {params.sources}"
        " --out-pairs {output.pairs} --out-sft {output.sft} --out-eval {output.eval} > {log} 2>&1"

# The training data (pairs, SFT rows); the prompts the policies are evaluated on come from
# eval_prompts.smk, apart, so a change to which prompts are evaluated (eval.*) re-runs no training job.
rule normalise:
    localrule: True
    input:
        unpack(raw_inputs("data")),
    output:
        pairs=f"{UP}/data/pairs.parquet",
        sft=f"{UP}/data/sft.parquet",
    params:
        cfg=NORMALISE_PARAMS,
        lineage=lineage_data(),
        sources=source_args,
    log:
        f"{UP}/logs/normalise.log",
    conda:
        ENV
    shell:
        "python -m drdo --lineage {params.lineage} normalise --params {params.cfg:q} {params.sources}"
        " --out-pairs {output.pairs} --out-sft {output.sft} > {log} 2>&1"


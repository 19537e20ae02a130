rule normalise:
    input:
        comparisons=raw_file("comparisons"),
        sft_train=raw_file("sft_train"),
        sft_test=raw_file("sft_test"),
        news=raw_file("news"),
    output:
        pairs=f"{UP}/data/pairs.parquet",
        sft=f"{UP}/data/sft.parquet",
        eval=f"{UP}/data/eval_prompts.parquet",
    params:
        cfg=as_json(config["eval"]),
        lineage=lineage_data(),
    log:
        f"{UP}/logs/normalise.log",
    conda:
        ENV
    shell:
        "python -m drdo --lineage {params.lineage} normalise --params {params.cfg:q} --comparisons {input.comparisons:q}"
        " --sft-train {input.sft_train:q} --sft-test {input.sft_test:q} --news {input.news:q}"
        " --out-pairs {output.pairs} --out-sft {output.sft} --out-eval {output.eval} > {log} 2>&1"

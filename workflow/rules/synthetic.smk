rule synthetic_world:
    output:
        comparisons=f"{OUT}/raw/comparisons.jsonl",
        sft_train=f"{OUT}/raw/sft_train.jsonl",
        sft_valid=f"{OUT}/raw/sft_valid.jsonl",
        sft_test=f"{OUT}/raw/sft_test.jsonl",
        news=f"{OUT}/raw/news_test.jsonl",
        provenance=f"{OUT}/raw/provenance.json",
    params:
        cfg=as_json(config["synthetic"]),
        lineage=lineage_raw(),
        out_dir=lambda wildcards, output: os.path.dirname(output.comparisons),
    log:
        f"{OUT}/logs/synthetic_world.log",
    conda:
        ENV
    shell:
        "python -m drdo.synthetic --config-json {params.cfg:q} --out-dir {params.out_dir} > {log} 2>&1"

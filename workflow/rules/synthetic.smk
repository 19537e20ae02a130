rule synthetic_world:
    localrule: True
    output:
        comparisons=f"{UP}/raw/comparisons.jsonl",
        sft_train=f"{UP}/raw/sft_train.jsonl",
        sft_valid=f"{UP}/raw/sft_valid.jsonl",
        sft_test=f"{UP}/raw/sft_test.jsonl",
        news=f"{UP}/raw/news_test.jsonl",
        provenance=f"{UP}/raw/provenance.json",
    params:
        cfg=as_json(config["synthetic"]),
        lineage=lineage_raw(),
        out_dir=lambda wildcards, output: os.path.dirname(output.comparisons),
    log:
        f"{UP}/logs/synthetic_world.log",
    conda:
        ENV
    shell:
        "python -m drdo.synthetic --config-json {params.cfg:q} --out-dir {params.out_dir} > {log} 2>&1"

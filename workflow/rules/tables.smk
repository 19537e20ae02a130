# Precomputed per-pair values, keyed by pair_id (README: "Tables"), so neither the Oracle,
# the ensemble nor the reference policy is in memory during alignment.
TABLE_PARAMS = as_json({**TOKENS, "batch_size": config["score"]["batch_size"]})
# Every pair any split holds (split.max_validation samples each split's validation pairs
# on its own, so hc_he / lc_le may hold validation pairs that `all` does not).
TABLE_PAIRS = expand(f"{OUT}/data/splits/{{split}}.parquet", split=["all", "hc_he", "lc_le"])


rule oracle_table:
    input:
        pairs=TABLE_PAIRS,
        oracle=f"{OUT}/models/oracle",
    output:
        f"{OUT}/tables/oracle_rewards.parquet",
    params:
        cfg=TABLE_PARAMS,
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/oracle_table.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} table --params {params.cfg:q} --pairs {input.pairs}"
        " --model oracle={input.oracle} --value reward --out {output} > {log} 2>&1"


rule ensemble_table:
    input:
        pairs=TABLE_PAIRS,
        members=expand(f"{OUT}/models/rm{{member}}", member=MEMBERS),
    output:
        f"{OUT}/tables/ensemble_rewards.parquet",
    params:
        cfg=TABLE_PARAMS,
        models=lambda wildcards, input: " ".join(f"--model rm{i}={m}" for i, m in enumerate(input.members)),
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/ensemble_table.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} table --params {params.cfg:q} --pairs {input.pairs}"
        " {params.models} --value reward --out {output} > {log} 2>&1"


rule gold_table:
    input:
        pairs=TABLE_PAIRS,
    output:
        f"{OUT}/tables/gold_rewards.parquet",
    params:
        cfg=as_json({"gold": GOLD}),
    log:
        f"{OUT}/logs/gold_table.log",
    conda:
        ENV
    shell:
        "python -m drdo gold-table --params {params.cfg:q} --pairs {input.pairs} --out {output} > {log} 2>&1"


rule reference_table:
    input:
        pairs=TABLE_PAIRS,
        sft=f"{OUT}/models/sft",
    output:
        f"{OUT}/tables/reference_logps.parquet",
    params:
        cfg=TABLE_PARAMS,
    threads: config["threads"]["default"]
    log:
        f"{OUT}/logs/reference_table.log",
    conda:
        ENV
    shell:
        "python -m drdo --threads {threads} table --params {params.cfg:q} --pairs {input.pairs}"
        " --model ref_logp={input.sft} --value logp --out {output} > {log} 2>&1"

# Precomputed per-pair values, keyed by pair_id (docs/artifacts.md, "Tables"), so neither the Oracle,
# the ensemble nor the reference policy is in memory during alignment.


rule oracle_table:
    input:
        pairs=TABLE_PAIRS,
        oracle=f"{UP}/models/oracle",
    output:
        f"{UP}/tables/oracle_rewards.parquet",
    params:
        cfg=TABLE_PARAMS,
        versions=version_mismatch,
        lineage=lineage_table("oracle_rewards"),
    threads: config["threads"]["default"]
    resources:
        gpu=res("oracle_table", "gpu"),
        mem_mb=res("oracle_table", "mem_mb"),
        runtime=res("oracle_table", "runtime"),
    log:
        f"{UP}/logs/oracle_table.log",
    conda:
        ENV
    shell:
        launch("oracle_table") + " -- --lineage {params.lineage} --version-mismatch {params.versions} table --params {params.cfg:q} --pairs {input.pairs}"
        " --model oracle={input.oracle} --value reward --out {output} > {log} 2>&1"


rule ensemble_table:
    input:
        pairs=TABLE_PAIRS,
        members=expand(f"{UP}/models/rm{{member}}", member=MEMBERS),
    output:
        f"{UP}/tables/ensemble_rewards.parquet",
    params:
        cfg=TABLE_PARAMS,
        versions=version_mismatch,
        lineage=lineage_table("ensemble_rewards"),
        models=lambda wildcards, input: " ".join(f"--model rm{i}={m}" for i, m in enumerate(input.members)),
    threads: config["threads"]["default"]
    resources:
        gpu=res("ensemble_table", "gpu"),
        mem_mb=res("ensemble_table", "mem_mb"),
        runtime=res("ensemble_table", "runtime"),
    log:
        f"{UP}/logs/ensemble_table.log",
    conda:
        ENV
    shell:
        launch("ensemble_table") + " -- --lineage {params.lineage} --version-mismatch {params.versions} table --params {params.cfg:q} --pairs {input.pairs}"
        " {params.models} --value reward --out {output} > {log} 2>&1"


rule gold_table:
    localrule: True
    input:
        pairs=TABLE_PAIRS,
    output:
        f"{UP}/tables/gold_rewards.parquet",
    params:
        cfg=as_json({"gold": GOLD}),
        lineage=lineage_table("gold_rewards"),
    log:
        f"{UP}/logs/gold_table.log",
    conda:
        ENV
    shell:
        "python -m drdo --lineage {params.lineage} gold-table --params {params.cfg:q} --pairs {input.pairs}"
        " --out {output} > {log} 2>&1"


rule reference_table:
    input:
        pairs=TABLE_PAIRS,
        sft=f"{UP}/models/sft",
    output:
        f"{UP}/tables/reference_logps.parquet",
    params:
        cfg=TABLE_PARAMS,
        versions=version_mismatch,
        lineage=lineage_table("reference_logps"),
    threads: config["threads"]["default"]
    resources:
        gpu=res("reference_table", "gpu"),
        mem_mb=res("reference_table", "mem_mb"),
        runtime=res("reference_table", "runtime"),
    log:
        f"{UP}/logs/reference_table.log",
    conda:
        ENV
    shell:
        launch("reference_table") + " -- --lineage {params.lineage} --version-mismatch {params.versions} table --params {params.cfg:q} --pairs {input.pairs}"
        " --model ref_logp={input.sft} --value logp --out {output} > {log} 2>&1"

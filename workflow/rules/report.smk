rule validation_report:
    input:
        models=[f"{OUT}/models/oracle"]
        + expand(f"{OUT}/models/rm{{member}}", member=MEMBERS)
        + expand(f"{OUT}/models/{{policy}}", policy=POLICIES[1:]),
    output:
        table=f"{OUT}/validation.csv",
        provenance=f"{OUT}/validation.provenance.json",
    params:
        expect=expected_lineage,
        code=code("cmd_report"),
    log:
        f"{OUT}/logs/validation_report.log",
    conda:
        ENV
    shell:
        "python -m drdo --expect-lineage {params.expect:q} report --models {input.models} --out {output.table}"
        " > {log} 2>&1"

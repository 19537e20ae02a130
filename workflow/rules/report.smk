rule validation_report:
    localrule: True
    input:
        models=[f"{UP}/models/oracle"]
        + expand(f"{UP}/models/rm{{member}}", member=TRAINED_MEMBERS)
        + expand(f"{OUT}/models/{{policy}}", policy=POLICIES[1:]),
    output:
        table=report(f"{OUT}/validation.csv", caption="../report/validation.rst", category="Tables", labels={"run": OUT, "table": "validation"}),
        provenance=f"{OUT}/validation.provenance.json",
    params:
        expect=expected_lineage,
        versions=version_mismatch,
        code=code("cmd_report"),
    log:
        f"{OUT}/logs/validation_report.log",
    conda:
        ENV
    shell:
        "python -m drdo --expect-lineage {params.expect:q} --version-mismatch {params.versions} report --models {input.models} --out {output.table}"
        " > {log} 2>&1"

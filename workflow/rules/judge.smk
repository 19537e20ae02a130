# LLM-judge verdicts (drdo/judge): only when judge.enabled; otherwise this file adds nothing.


include: "judge_common.smk"


if JUDGE_ON:

    rule judge:
        input:
            scores=[f"{run_dir(p)}/scores/{p}.parquet" for p in judge_policies()],
            prompts=f"{UP}/data/eval_prompts.parquet",
            templates=[judge_template(p) for p in JUDGE["prompts"].values()],
        output:
            verdicts=JUDGE_VERDICTS,
            report=f"{OUT}/judge_report.csv",
            provenance=f"{OUT}/judge_report.provenance.json",
        params:
            cfg=judge_job_params,
            lineage=lineage_judge(),
            versions=version_mismatch,
            expect=lambda wildcards, input: as_json({f: lineage_of(f) for f in input.scores}),
            # the call cache lives outside the outputs: a failed or killed job keeps it
            cache=f"{OUT}/.judge_cache/judge.jsonl",
            templates=" ".join(f"{k}={judge_template(v)}" for k, v in JUDGE["prompts"].items()),
        threads: JUDGE["serve"]["threads"] if JUDGE["serve"] else 1
        log:
            f"{OUT}/logs/judge.log",
        conda:
            ENV
        shell:
            "python -m drdo --lineage {params.lineage} --expect-lineage {params.expect:q} --version-mismatch {params.versions} judge --params {params.cfg:q} --scores {input.scores} --prompts {input.prompts}"
            " --templates {params.templates} --cache {params.cache} --out-verdicts {output.verdicts}"
            " --out-report {output.report} > {log} 2>&1"
            # the job's warnings (e.g. mostly unusable verdicts) also on the run's own output
            " && {{ grep -F ' WARNING ' {log} >&2 || true; }}"

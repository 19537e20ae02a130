# DRDO / DPO / e-DPO preference alignment, every stage a cached Snakemake rule.
#   snakemake --cores all results/winrates.csv                 # embedded offline default
#   snakemake --cores all --configfile my.yaml <out_dir>/winrates.csv
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/normalise.smk"
include: "workflow/rules/eval_prompts.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/oracle.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/winrates.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figures.smk"
# Rules of seconds of CPU on small tables carry `localrule: True`: never worth a cluster submission
# (a rule property, unlike a `localrules:` list, follows the rule into a study's module instances).


rule all:
    input:
        f"{OUT}/winrates.csv",
        f"{UP}/data/table5.csv",
        f"{OUT}/validation.csv",
    default_target: True

# BESS knowledge-graph-embedding pipeline: dataset -> Parquet shards -> models -> top-K -> ensemble -> OGB submission.
from snakemake.utils import min_version, validate

min_version("8.0")


report: "workflow/report/workflow.rst"


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/shard.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/submit.smk"


rule all:
    input:
        SUBMISSION_FILES,
        f"{RESULTS}/submission/metadata.json",
        f"{RESULTS}/plots/training_curves.png",
        f"{RESULTS}/plots/ensemble.png",
    default_target: True

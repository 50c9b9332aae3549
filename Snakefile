# BESS knowledge-graph-embedding pipeline: dataset -> Parquet shards -> models -> top-K -> ensemble -> OGB submission.
from snakemake.utils import min_version, validate

min_version("8.0")


report: "workflow/report/workflow.rst"


# A --configfile on the command line replaces config.yaml (list config.yaml first to overlay it):
# the 85-model recipe brings its own complete model list, which must not merge with the default one.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/shard.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/submit.smk"
include: "workflow/rules/techniques.smk"


rule all:
    input:
        FINAL_TARGETS,
        # members: finished -> the models not finished yet keep training alongside.
        TRAINING_TARGETS,
    default_target: True


rule train_all:
    input:
        expand(f"{RESULTS}/models/{{model}}/model.pt", model=PIPELINE_MODELS),

# BESS knowledge-graph-embedding pipeline: dataset -> Parquet shards -> models -> top-K -> ensemble -> OGB submission.
import os

from snakemake.utils import min_version, validate

min_version("8.0")


report: "workflow/report/workflow.rst"


# config.yaml holds every key's default. A --configfile on the command line names only what it
# changes; a config with its own `models` (the 85-model recipe) gets neither the default models nor
# the default model_defaults (kge.config.with_pipeline_defaults).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"

else:
    import yaml

    from kge.config import with_pipeline_defaults

    with open(os.path.join(workflow.basedir, "config.yaml")) as _defaults:
        _merged = with_pipeline_defaults(dict(config), yaml.safe_load(_defaults))
    config.clear()
    config.update(_merged)


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/shard.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/submit.smk"
include: "workflow/rules/evaluate.smk"
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

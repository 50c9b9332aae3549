# Paths and per-model settings shared by every rule. Model settings are validated in depth here
# (kge's own schema) so a mistyped key fails before any job runs.
import json

from kge.config import deep_merge, resolve_model_config

DATASET = config["dataset"]
ROOT = f"{config['data_dir']}/{DATASET}"
RESULTS = config["results_dir"]
SHARDS = f"{RESULTS}/shards"
DATASET_OK = f"{ROOT}/dataset.ok"
THREADS = config["threads_per_job"]
MODELS = {
    name: resolve_model_config(deep_merge(config.get("model_defaults", {}), settings or {}), where=f"config key models.{name}")
    for name, settings in config["models"].items()
}
ENSEMBLE_MEMBERS = config["ensemble"].get("members") or list(MODELS)
for _name in ENSEMBLE_MEMBERS:
    if _name not in MODELS:
        raise ValueError(f"config key ensemble.members: '{_name}' is not a model in 'models' ({', '.join(MODELS)})")
SUBMISSION_FILES = [f"{RESULTS}/submission/t_pred_wikikg90m-v2_{mode}.npz" for mode in ("test-dev", "test-challenge")]

wildcard_constraints:
    model="|".join(MODELS),


def model_settings_json(wildcards):
    return json.dumps(MODELS[wildcards.model], sort_keys=True)

# Paths and per-model settings shared by every rule. Model settings are validated in depth here
# (kge's own schema) so a mistyped key fails before any job runs.
import json
import os
import re
import sys

from kge.config import deep_merge, resolve_model_config, scale_settings
from kge.techniques.studies import study_models, sweep_models

DATASET = config["dataset"]
# A scaled graph's folder names its fraction and seed, so graphs of several sizes live side by side.
ROOT = (
    f"{config['data_dir']}/scaled-f{config['scaled']['fraction']:g}-s{config['scaled']['seed']}"
    if DATASET == "scaled" else f"{config['data_dir']}/{DATASET}"
)
RESULTS = config["results_dir"]
SHARDS = f"{RESULTS}/shards"
DATASET_OK = f"{ROOT}/dataset.ok"
THREADS = config["threads_per_job"]
# `scale` (optional) shrinks every model's schedule, e.g. the 85-model recipe on the miniature.
# An imported graph without entity features gets features.use: false unless a model asks for them:
# random features cost 1.5x the training time and lowered MRR (benchmarks/import_features.md).
_BASE_SETTINGS = {"features": {"use": False}} if DATASET == "import" and not config["import"].get("entity_features") else {}
MODEL_SETTINGS = {
    name: scale_settings(deep_merge(deep_merge(_BASE_SETTINGS, config.get("model_defaults", {})), settings or {}), config.get("scale"))
    for name, settings in config["models"].items()
}
PIPELINE_MODELS = list(MODEL_SETTINGS)  # the ensemble's candidates; technique models are added below
# Technique studies and sweeps (techniques.smk) train and score their models through the same rules.
_TECHNIQUES = config.get("techniques") or {}
TECHNIQUE_MODEL_SETTINGS = {
    **study_models(_TECHNIQUES.get("studies"), MODEL_SETTINGS),
    **sweep_models(_TECHNIQUES.get("sweeps"), MODEL_SETTINGS),
}
for _name in TECHNIQUE_MODEL_SETTINGS:
    if _name in MODEL_SETTINGS:
        raise ValueError(f"config key models.{_name}: the name is taken by a technique study or sweep model; rename the model")
MODEL_SETTINGS.update(TECHNIQUE_MODEL_SETTINGS)
MODELS = {
    name: resolve_model_config(
        settings, where=f"config key models.{name}" if name in PIPELINE_MODELS else f"technique model {name} (config key techniques)"
    )
    for name, settings in MODEL_SETTINGS.items()
}
SUBMISSION_FILES = [f"{RESULTS}/submission/t_pred_wikikg90m-v2_{mode}.npz" for mode in ("test-dev", "test-challenge")]
_MEMBERS = config["ensemble"].get("members")
if _MEMBERS == "finished":
    # The models whose training has finished when the workflow is planned; the others keep training
    # (rule all asks for every model), and a later run re-ensembles with whatever has finished then.
    ENSEMBLE_MEMBERS = [name for name in PIPELINE_MODELS if os.path.exists(f"{RESULTS}/models/{name}/model.pt")]
    if not ENSEMBLE_MEMBERS:
        print(
            f"ensemble.members = finished: no model has finished training yet (no {RESULTS}/models/*/model.pt); "
            "this run trains, run snakemake again to ensemble what has finished",
            file=sys.stderr,
        )
else:
    ENSEMBLE_MEMBERS = _MEMBERS or list(PIPELINE_MODELS)
TRAINING_TARGETS = [f"{RESULTS}/models/{name}/model.pt" for name in PIPELINE_MODELS] if _MEMBERS == "finished" else []
EVALUATION = config["evaluation"]
EVALUATION_TARGETS = [f"{RESULTS}/evaluation/{name}" for name in ("summary.json", "summary.md")] if ENSEMBLE_MEMBERS else []
# WikiKG90Mv2 and its miniature end in the OGB submission (the ensemble, its plots, ogb's files); an
# imported graph ends in the standard filtered evaluation (rules/evaluate.smk). Nothing to ensemble yet: none.
if DATASET == "import":
    FINAL_TARGETS = EVALUATION_TARGETS
else:
    FINAL_TARGETS = (
        SUBMISSION_FILES + [f"{RESULTS}/submission/{name}" for name in ("metadata.json", "leaderboard.txt")]
        + [f"{RESULTS}/plots/{name}.png" for name in ("training_curves", "ensemble", "mrr_by_family", "timing")]
        if ENSEMBLE_MEMBERS else []
    )


def check_model_names(key, names):
    """Every name listed under config key `key` must be a model of 'models'."""
    for name in names:
        if name not in MODELS:
            raise ValueError(f"config key {key}: '{name}' is not a model in 'models' ({', '.join(MODELS)})")


check_model_names("ensemble.members", ENSEMBLE_MEMBERS)

wildcard_constraints:
    model="|".join(re.escape(name) for name in MODELS),


def model_settings_json(wildcards):
    # The settings as written in the config (kge fills its defaults when it writes config.json): a
    # new kge option with a neutral default does not change this parameter, so trained models stay.
    return json.dumps(MODEL_SETTINGS[wildcards.model], sort_keys=True)


def folder_of(path, depth=1):
    """The folder `depth` levels above file `path`, spelled as in `path` (f"{folder}/a/b", depth 2 -> folder).

    A rule's params that name a folder of its own input or output (--root, --shard-dir, --out ...) derive
    it from that file (`lambda wildcards, input: folder_of(input.shards)`) instead of repeating the path,
    so the folder follows the file wherever Snakemake stages it (storage without a shared file system).
    """
    return path.rsplit("/", depth)[0]


# ----- launching multi-worker models (config key `launcher`) ---------------------------------------
# launcher: null -> today's behaviour: `kge train`/`kge predict` start torchrun themselves on the node
# the job runs on, and jobs take `threads_per_job` threads. launcher: {...} -> per-model cluster
# resources derived from the model's `workers` W, and for W > 1 with a `command`, that command (with
# its {placeholders} filled in) prefixes `kge train`/`kge predict` to start the W workers across nodes.
import math

LAUNCHER = config.get("launcher")
_PLACEHOLDER = re.compile(r"(?<!\$)\{(\w+)\}")  # {nodes} is ours; ${VAR} is left to the shell
LAUNCH_PLACEHOLDERS = ("nodes", "workers", "workers_per_node", "cpus_per_worker", "cpus_per_node", "gpus_per_node")

for _name, _cfg in MODELS.items():
    if config["shards"]["count"] % _cfg.workers:
        raise ValueError(
            f"config key models.{_name}.workers: {_cfg.workers} workers must divide shards.count = {config['shards']['count']}"
        )


def launch_plan(name):
    """How model `name` runs under `launcher`: a dict of nodes, workers per node, threads and the
    command prefix ("" = none), or None when `launcher` is null."""
    if not LAUNCHER:
        return None
    workers = MODELS[name].workers
    per_node_max = LAUNCHER["workers_per_node"]
    command = LAUNCHER.get("command") if workers > 1 else None
    if workers > per_node_max and not command:
        raise ValueError(
            f"config key models.{name}.workers: {workers} workers do not fit on one node "
            f"(launcher.workers_per_node = {per_node_max}) and launcher.command is not set"
        )
    if workers > per_node_max and workers % per_node_max:
        raise ValueError(
            f"config key models.{name}.workers: {workers} workers are not a whole number of nodes of "
            f"launcher.workers_per_node = {per_node_max}"
        )
    per_node = min(workers, per_node_max)
    plan = {
        "nodes": math.ceil(workers / per_node),
        "workers": workers,
        "workers_per_node": per_node,
        "cpus_per_worker": LAUNCHER["cpus_per_worker"],
        "cpus_per_node": per_node * LAUNCHER["cpus_per_worker"],
        "gpus_per_node": per_node * LAUNCHER["gpus_per_worker"],
    }
    prefix = ""
    if command:
        def fill(match):
            key = match.group(1)
            if key not in LAUNCH_PLACEHOLDERS:
                raise ValueError(
                    f"config key launcher.command: unknown placeholder {{{key}}} (known: {', '.join(LAUNCH_PLACEHOLDERS)}; "
                    "write ${VAR} for shell variables)"
                )
            return str(plan[key])

        prefix = _PLACEHOLDER.sub(fill, command.strip())
    plan["prefix"] = prefix
    return plan


LAUNCH = {name: launch_plan(name) for name in MODELS}


def launch_prefix(wildcards):
    """The launcher command before `kge train`/`kge predict` ("" when kge launches its own workers)."""
    plan = LAUNCH[wildcards.model]
    return plan["prefix"] if plan else ""


def job_threads(wildcards):
    """Threads of a train/predict job: per node, split by kge among its local workers."""
    plan = LAUNCH[wildcards.model]
    # Without a launcher, W local workers need W cores at least (Snakemake schedules by threads).
    return plan["cpus_per_node"] if plan else max(THREADS, MODELS[wildcards.model].workers)


def _resource(step, key):
    """resources: callables for the SLURM executor plugin; None leaves the resource unset."""

    def value(wildcards):
        plan = LAUNCH[wildcards.model]
        if plan is None:
            return None
        multi_node = bool(plan["prefix"])  # the command starts one task per worker itself
        gpus = plan["gpus_per_node"]
        if key == "nodes":
            return plan["nodes"]
        if key == "mpi":  # the plugin then runs the job's shell without wrapping it in `srun -n1`
            return "srun" if multi_node else None
        if key == "tasks_per_node":  # --ntasks-per-node (the plugin wants > 1 with mpi)
            return plan["workers_per_node"] if multi_node and plan["workers_per_node"] > 1 else None
        if key == "tasks":  # one worker per node: --ntasks = W over W nodes
            return plan["workers"] if multi_node and plan["workers_per_node"] == 1 else None
        if key == "tasks_per_gpu":  # 0: no --ntasks-per-gpu (the plugin would otherwise copy `tasks` there)
            return 0 if multi_node and gpus and plan["workers_per_node"] == 1 else None
        if key == "cpus_per_task":
            return plan["cpus_per_worker"] if multi_node else plan["cpus_per_node"]
        if key == "gres":  # per node: --gres=gpu:G
            return f"gpu:{gpus}" if multi_node and gpus else None
        if key == "gpu":  # single-node job: --gpus=G (also on its srun step)
            return gpus if not multi_node and gpus else None
        if key == "mem_mb":  # --mem is per node
            per_worker = LAUNCHER.get("mem_mb_per_worker")
            return per_worker * plan["workers_per_node"] if per_worker else None
        if key == "runtime":
            return (LAUNCHER.get("runtime") or {}).get(step)
        if key == "slurm_partition":
            return LAUNCHER.get("slurm_partition")
        raise KeyError(key)

    return value


def launch_resources(step):
    """Keyword arguments for a rule's `resources:` (step = "train" or "predict"); none without a launcher.

    mem_mb and runtime are left out unless the launcher sets them (Snakemake refuses None for sized
    resources), so the profile's default-resources apply.
    """
    if not LAUNCHER:
        return {}
    keys = ["nodes", "mpi", "tasks", "tasks_per_node", "tasks_per_gpu", "cpus_per_task", "gres", "gpu", "slurm_partition"]
    if LAUNCHER.get("mem_mb_per_worker"):
        keys.append("mem_mb")
    if (LAUNCHER.get("runtime") or {}).get(step):
        keys.append("runtime")
    return {key: _resource(step, key) for key in keys}


# ----- techniques (rules/techniques.smk): quantised variants, studies and sweeps --------------------
import shlex

from kge.techniques.studies import study_members, sweep_grid

_QUANTISE = _TECHNIQUES.get("quantise") or {}
QUANTISE_MODELS = _QUANTISE.get("models") or []
QUANTISE_VARIANTS = _QUANTISE.get("variants") or {}
check_model_names("techniques.quantise.models", QUANTISE_MODELS)
QUANTISED = f"{RESULTS}/techniques/quantise"
STUDIES = _TECHNIQUES.get("studies") or {}
SWEEPS = _TECHNIQUES.get("sweeps") or {}
STUDY_MEMBERS = {name: study_members(name, spec) for name, spec in STUDIES.items()}
SWEEP_GRIDS = {name: sweep_grid(name, spec, MODEL_SETTINGS) for name, spec in SWEEPS.items()}
TECHNIQUE_TARGETS = (
    ([f"{RESULTS}/techniques/quantise.md"] if QUANTISE_VARIANTS and QUANTISE_MODELS else [])
    + [f"{RESULTS}/techniques/{name}.md" for name in STUDIES]
    + [f"{RESULTS}/techniques/{name}.png" for name in SWEEPS]
)


def quantise_args(wildcards):
    """kge quantise flags of one variant (table format and scaling, optional feature format)."""
    variant = QUANTISE_VARIANTS[wildcards.variant]
    args = f"--format {variant['table']} --scaling {variant.get('scaling', 'none')}"
    if variant.get("features"):
        args += f" --feature-format {variant['features']} --feature-scaling {variant.get('feature_scaling', 'none')}"
    if variant.get("stochastic"):
        args += f" --stochastic --seed {variant.get('seed', 0)}"
    return args


def study_inputs(wildcards):
    baseline, variants = STUDY_MEMBERS[wildcards.study]
    return [f"{RESULTS}/predictions/{model}.json" for model in [baseline] + variants] + [
        f"{RESULTS}/models/{model}/model.pt" for model in [baseline] + variants  # history.json is written with it
    ]


def study_args(wildcards):
    baseline, variants = STUDY_MEMBERS[wildcards.study]
    claim = STUDIES[wildcards.study].get("claim")
    return f"--baseline {baseline} --variants {' '.join(variants)}" + (f" --claim {shlex.quote(claim)}" if claim else "")


def sweep_inputs(wildcards):
    return [f"{RESULTS}/predictions/{point['model']}.json" for point in SWEEP_GRIDS[wildcards.sweep]]

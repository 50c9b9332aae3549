# The sibling papers' techniques as rules over any trained model (docs/techniques.md).
# `snakemake techniques` runs every technique configured under `techniques:`; none is part of `all`.

_QUANTISE = (config.get("techniques") or {}).get("quantise") or {}
QUANTISE_MODELS = _QUANTISE.get("models") or []
QUANTISE_VARIANTS = _QUANTISE.get("variants") or {}
check_model_names("techniques.quantise.models", QUANTISE_MODELS)
QUANTISED = f"{RESULTS}/techniques/quantise"


def quantise_args(wildcards):
    """kge quantise flags of one variant (table format and scaling, optional feature format)."""
    variant = QUANTISE_VARIANTS[wildcards.variant]
    args = f"--format {variant['table']} --scaling {variant.get('scaling', 'none')}"
    if variant.get("features"):
        args += f" --feature-format {variant['features']} --feature-scaling {variant.get('feature_scaling', 'none')}"
    if variant.get("stochastic"):
        args += f" --stochastic --seed {variant.get('seed', 0)}"
    return args


if QUANTISE_VARIANTS:

    wildcard_constraints:
        variant="|".join(QUANTISE_VARIANTS),

    # A trained model's entity rows (and features) as the variant's format stores them.
    rule quantise:
        input:
            model=f"{RESULTS}/models/{{model}}/model.pt",
            shards=f"{SHARDS}/shard_meta.json",
        output:
            f"{QUANTISED}/{{model}}/{{variant}}/model.pt",
        params:
            out=f"{QUANTISED}/{{model}}/{{variant}}",
            shards=SHARDS,
            args=quantise_args,
        log:
            f"{RESULTS}/logs/quantise/{{model}}.{{variant}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/quantise/{{model}}.{{variant}}.tsv"
        shell:
            "kge quantise --model {input.model} --out {params.out} --shard-dir {params.shards} {params.args} 2> {log}"

    # Re-scored against all entities, exactly as the original model is.
    rule predict_quantised:
        input:
            model=f"{QUANTISED}/{{model}}/{{variant}}/model.pt",
            shards=f"{SHARDS}/shard_meta.json",
        output:
            predictions=f"{QUANTISED}/{{model}}/{{variant}}/predictions.npz",
            metrics=f"{QUANTISED}/{{model}}/{{variant}}/predictions.json",
        params:
            root=ROOT,
            shards=SHARDS,
            top_k=config["top_k"],
        threads: THREADS
        log:
            f"{RESULTS}/logs/quantise/{{model}}.{{variant}}.predict.log",
        benchmark:
            f"{RESULTS}/benchmarks/quantise_predict/{{model}}.{{variant}}.tsv"
        shell:
            "kge predict --model {input.model} --name {wildcards.model}.{wildcards.variant} --root {params.root}"
            " --shard-dir {params.shards} --top-k {params.top_k} --out {output.predictions} --metrics {output.metrics}"
            " --workers 1 --threads {threads} 2> {log}"

    # MRR and bytes per entity of every variant beside the original model's.
    rule quantize_report:
        input:
            baselines=expand(f"{RESULTS}/predictions/{{model}}.json", model=QUANTISE_MODELS),
            variants=expand(f"{QUANTISED}/{{model}}/{{variant}}/predictions.json", model=QUANTISE_MODELS, variant=QUANTISE_VARIANTS),
        output:
            table=report(f"{RESULTS}/techniques/quantise.md", category="Techniques", caption="../report/quantise.rst"),
            json=f"{RESULTS}/techniques/quantise.json",
        log:
            f"{RESULTS}/logs/quantise/report.log",
        shell:
            "kge quantise-report --baselines {input.baselines} --variants {input.variants}"
            " --out {output.table} --json {output.json} 2> {log}"


# ----- studies: variants of one model, trained and scored by the pipeline's own rules ----------
import shlex

from kge.techniques.studies import study_members, sweep_grid

STUDIES = (config.get("techniques") or {}).get("studies") or {}
SWEEPS = (config.get("techniques") or {}).get("sweeps") or {}
STUDY_MEMBERS = {name: study_members(name, spec) for name, spec in STUDIES.items()}
SWEEP_GRIDS = {name: sweep_grid(name, spec, MODEL_SETTINGS) for name, spec in SWEEPS.items()}


def study_inputs(wildcards):
    baseline, variants = STUDY_MEMBERS[wildcards.study]
    return [f"{RESULTS}/predictions/{model}.json" for model in [baseline] + variants] + [
        f"{RESULTS}/models/{model}/model.pt" for model in [baseline] + variants  # history.json is written with it
    ]


def study_args(wildcards):
    baseline, variants = STUDY_MEMBERS[wildcards.study]
    claim = STUDIES[wildcards.study].get("claim")
    return f"--baseline {baseline} --variants {' '.join(variants)}" + (f" --claim {shlex.quote(claim)}" if claim else "")


if STUDIES:

    wildcard_constraints:
        study="|".join(STUDIES),

    # One table per study: every variant's validation MRR, parameters, row bytes, time and loss beside the base.
    rule study_report:
        input:
            study_inputs,
        output:
            table=report(f"{RESULTS}/techniques/{{study}}.md", category="Techniques", subcategory="studies", caption="../report/study.rst"),
            json=f"{RESULTS}/techniques/{{study}}.json",
        params:
            args=study_args,
            results=RESULTS,
        log:
            f"{RESULTS}/logs/techniques/{{study}}.log",
        shell:
            "kge study-report --name {wildcards.study} {params.args} --results {params.results}"
            " --out {output.table} --json {output.json} 2> {log}"


def sweep_inputs(wildcards):
    return [f"{RESULTS}/predictions/{point['model']}.json" for point in SWEEP_GRIDS[wildcards.sweep]]


if SWEEPS:

    wildcard_constraints:
        sweep="|".join(SWEEPS),

    # Batch size x base learning rate: heat map of validation MRR and the stable learning-rate band.
    rule sweep_report:
        input:
            sweep_inputs,
        output:
            table=f"{RESULTS}/techniques/{{sweep}}.md",
            json=f"{RESULTS}/techniques/{{sweep}}.json",
            plot=report(f"{RESULTS}/techniques/{{sweep}}.png", category="Techniques", subcategory="sweeps", caption="../report/sweep.rst"),
        params:
            spec=lambda wildcards: json.dumps(SWEEPS[wildcards.sweep]),
            base=lambda wildcards: json.dumps(MODEL_SETTINGS[SWEEPS[wildcards.sweep]["base"]]),
            results=RESULTS,
        log:
            f"{RESULTS}/logs/techniques/{{sweep}}.log",
        shell:
            "kge sweep-report --name {wildcards.sweep} --spec {params.spec:q} --base-settings {params.base:q}"
            " --results {params.results} --out {output.table} --json {output.json} --plot {output.plot} 2> {log}"


TECHNIQUE_TARGETS = (
    ([f"{RESULTS}/techniques/quantise.md"] if QUANTISE_VARIANTS and QUANTISE_MODELS else [])
    + [f"{RESULTS}/techniques/{name}.md" for name in STUDIES]
    + [f"{RESULTS}/techniques/{name}.png" for name in SWEEPS]
)


rule techniques:
    input:
        TECHNIQUE_TARGETS,

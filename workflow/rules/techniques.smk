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
    rule quantise_report:
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


TECHNIQUE_TARGETS = [f"{RESULTS}/techniques/quantise.md"] if QUANTISE_VARIANTS and QUANTISE_MODELS else []


rule techniques:
    input:
        TECHNIQUE_TARGETS,

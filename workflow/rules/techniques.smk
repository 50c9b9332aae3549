# The sibling papers' techniques as rules over any trained model (docs/techniques.md).
# `snakemake techniques` runs every technique configured under `techniques:`; none is part of `all`.
# What they run on (models, variants, studies, sweeps) and their input functions: rules/common.smk.

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
            out=lambda wildcards, output: folder_of(output[0]),
            shards=lambda wildcards, input: folder_of(input.shards),
            args=quantise_args,
        conda:
            "../../envs/kge.yaml"
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
            shards=lambda wildcards, input: folder_of(input.shards),
            top_k=config["top_k"],
        threads: THREADS
        conda:
            "../../envs/kge.yaml"
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
        conda:
            "../../envs/kge.yaml"
        log:
            f"{RESULTS}/logs/quantise/report.log",
        shell:
            "kge quantise-report --baselines {input.baselines} --variants {input.variants}"
            " --out {output.table} --json {output.json} 2> {log}"


# ----- studies: variants of one model, trained and scored by the pipeline's own rules ----------

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
            results=lambda wildcards, output: folder_of(output.json, 2),
        conda:
            "../../envs/kge.yaml"
        log:
            f"{RESULTS}/logs/techniques/{{study}}.log",
        shell:
            "kge study-report --name {wildcards.study} {params.args} --results {params.results}"
            " --out {output.table} --json {output.json} 2> {log}"


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
            results=lambda wildcards, output: folder_of(output.json, 2),
        conda:
            "../../envs/kge.yaml"
        log:
            f"{RESULTS}/logs/techniques/{{sweep}}.log",
        shell:
            "kge sweep-report --name {wildcards.sweep} --spec {params.spec:q} --base-settings {params.base:q}"
            " --results {params.results} --out {output.table} --json {output.json} --plot {output.plot} 2> {log}"


rule techniques:
    input:
        TECHNIQUE_TARGETS,

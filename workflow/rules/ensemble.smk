# Rank-power mean ensemble of the members' top-K lists; the power is tuned on validation.

rule ensemble:
    input:
        predictions=expand(f"{RESULTS}/predictions/{{model}}.npz", model=ENSEMBLE_MEMBERS),
        metrics=expand(f"{RESULTS}/predictions/{{model}}.json", model=ENSEMBLE_MEMBERS),
    output:
        ensemble=f"{RESULTS}/ensemble/ensemble.npz",
        summary=f"{RESULTS}/ensemble/summary.json",
        table=report(f"{RESULTS}/ensemble/summary.md", category="Ensemble", caption="../report/summary.rst"),
        csv=f"{RESULTS}/ensemble/summary.csv",
    params:
        root=ROOT,
        out=lambda wildcards, output: folder_of(output.ensemble),
        power=config["ensemble"]["power"],
        top_k=config["ensemble"]["top_k"],
        tune="--tune" if config["ensemble"]["tune_power"] else "",
        powers=" ".join(str(p) for p in config["ensemble"]["powers"]),
        exponents=" ".join(str(g) for g in config["ensemble"].get("weight_exponents", [0.0])),
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/ensemble.log",
    benchmark:
        f"{RESULTS}/benchmarks/ensemble.tsv"
    shell:
        "kge ensemble --root {params.root} --predictions {input.predictions} --out-dir {params.out}"
        " --power {params.power} --top-k {params.top_k} {params.tune} --powers {params.powers}"
        " --weight-exponents {params.exponents} > {log} 2>&1"


rule plots:
    input:
        summary=f"{RESULTS}/ensemble/summary.json",
        models=expand(f"{RESULTS}/models/{{model}}/model.pt", model=ENSEMBLE_MEMBERS),
    output:
        curves=report(f"{RESULTS}/plots/training_curves.png", category="Training", caption="../report/curves.rst"),
        model_curves=report(
            directory(f"{RESULTS}/plots/models"),
            patterns=["{name}.png"],
            category="Training curves per model",
            caption="../report/model_curves.rst",
        ),
        ensemble=report(f"{RESULTS}/plots/ensemble.png", category="Ensemble", caption="../report/ensemble.rst"),
        families=report(f"{RESULTS}/plots/mrr_by_family.png", category="Ensemble", caption="../report/families.rst"),
    params:
        histories=expand(f"{RESULTS}/models/{{model}}/history.json", model=ENSEMBLE_MEMBERS),
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/plots.log",
    shell:
        "kge plot --histories {params.histories} --summary {input.summary} --curves {output.curves}"
        " --ensemble {output.ensemble} --families {output.families} --model-curves {output.model_curves} 2> {log}"


# Wall time and peak memory of every job, from the benchmark files the heavy rules write.
rule timing:
    input:
        benchmarks=[f"{RESULTS}/benchmarks/shard.tsv", f"{RESULTS}/benchmarks/ensemble.tsv"]
        + expand(f"{RESULTS}/benchmarks/{{step}}/{{model}}.tsv", step=("train", "predict"), model=ENSEMBLE_MEMBERS),
    output:
        figure=report(f"{RESULTS}/plots/timing.png", category="Timing", caption="../report/timing.rst"),
        table=report(f"{RESULTS}/plots/timing.md", category="Timing", caption="../report/timing.rst"),
    params:
        benchmarks=lambda wildcards, input: folder_of(input.benchmarks[0]),
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/timing.log",
    shell:
        "kge timing --benchmarks {params.benchmarks} --out {output.figure} --table {output.table} 2> {log}"

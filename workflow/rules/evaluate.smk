# The standard link-prediction evaluation (filtered, both directions, every entity a candidate) of
# every ensemble member, and the rank-power ensemble under the same protocol (summary.md). It ends an
# imported graph's pipeline; on WikiKG90Mv2 and the miniature it runs with `snakemake evaluation`.


rule evaluate:
    input:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        shards=f"{SHARDS}/shard_meta.json",
    output:
        metrics=f"{RESULTS}/evaluation/{{model}}.json",
        arrays=f"{RESULTS}/evaluation/{{model}}.npz",
    params:
        root=ROOT,
        shards=lambda wildcards, input: folder_of(input.shards),
        heads=EVALUATION["heads"],
        samples=f"--samples {EVALUATION['samples']}" if EVALUATION.get("samples") else "",
        top_k=EVALUATION["top_k"],
    threads: THREADS
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/evaluate/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{model}}.tsv"
    shell:
        "kge evaluate --model {input.model} --name {wildcards.model} --root {params.root} --shard-dir {params.shards}"
        " --out {output.metrics} --arrays {output.arrays} --heads {params.heads} {params.samples} --top-k {params.top_k}"
        " --threads {threads} 2> {log}"


rule evaluation_summary:
    input:
        expand(f"{RESULTS}/evaluation/{{model}}.npz", model=ENSEMBLE_MEMBERS),
    output:
        summary=f"{RESULTS}/evaluation/summary.json",
        table=report(f"{RESULTS}/evaluation/summary.md", category="Evaluation", caption="../report/evaluation.rst"),
    params:
        root=ROOT,
        out=lambda wildcards, output: folder_of(output.summary),
        powers=" ".join(str(p) for p in config["ensemble"]["powers"]),
        exponents=" ".join(str(g) for g in config["ensemble"].get("weight_exponents", [0.0])),
        power=config["ensemble"]["power"],
        tune="" if config["ensemble"]["tune_power"] else "--no-tune",
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/evaluation_summary.log",
    shell:
        "kge evaluate-ensemble --evaluations {input} --out-dir {params.out} --root {params.root} --power {params.power}"
        " {params.tune} --powers {params.powers} --weight-exponents {params.exponents} 2> {log}"


rule evaluation:
    input:
        EVALUATION_TARGETS,

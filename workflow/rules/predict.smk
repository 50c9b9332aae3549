# Top-K over all entities for validation, test-dev and test-challenge; validation MRR by ogb's evaluator.
# Multi-worker models are launched as in train.smk (config key `launcher`).

rule predict:
    input:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        shards=f"{SHARDS}/shard_meta.json",
    output:
        predictions=f"{RESULTS}/predictions/{{model}}.npz",
        metrics=f"{RESULTS}/predictions/{{model}}.json",
    params:
        root=ROOT,
        shards=lambda wildcards, input: folder_of(input.shards),
        top_k=config["top_k"],
        launch=launch_prefix,
    threads: job_threads
    resources:
        **launch_resources("predict"),
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/predict/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{model}}.tsv"
    shell:
        "{params.launch} kge predict --model {input.model} --name {wildcards.model} --root {params.root} --shard-dir {params.shards}"
        " --top-k {params.top_k} --out {output.predictions} --metrics {output.metrics} --threads {threads} 2> {log}"

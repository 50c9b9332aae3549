# One training job per model. A killed job resumes from models/<name>/checkpoint.pt (not a declared
# output, so Snakemake leaves it alone); model.pt appears only when training has finished.
# Multi-worker models: with `launcher` null, `kge train` starts torchrun itself on the job's node;
# with `launcher.command` set, that command (srun + torchrun) starts the workers across nodes, and the
# job asks the batch system for nodes, tasks, GPUs, CPUs, memory and time derived from `workers`.

localrules:
    model_config,


rule model_config:
    output:
        f"{RESULTS}/models/{{model}}/config.json",
    params:
        settings=model_settings_json,
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/model_config/{{model}}.log",
    shell:
        "kge config model --name {wildcards.model} --json {params.settings:q} --out {output} 2> {log}"


rule train:
    input:
        config=f"{RESULTS}/models/{{model}}/config.json",
        shards=f"{SHARDS}/shard_meta.json",
    output:
        f"{RESULTS}/models/{{model}}/model.pt",
    params:
        root=ROOT,
        shards=lambda wildcards, input: folder_of(input.shards),
        out=lambda wildcards, output: folder_of(output[0]),
        launch=launch_prefix,
    threads: job_threads
    resources:
        **launch_resources("train"),
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/train/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}.tsv"
    shell:
        "{params.launch} kge train --config {input.config} --root {params.root} --shard-dir {params.shards}"
        " --out {params.out} --threads {threads} 2> {log}"

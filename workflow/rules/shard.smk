# Training triples -> Parquet partitioned by BESS bucket (head shard, tail shard); features by shard.
# shard_meta.json is written last, so its presence means the whole directory is complete.

rule shard:
    input:
        DATASET_OK,
    output:
        f"{SHARDS}/shard_meta.json",
    params:
        root=lambda wildcards, input: folder_of(input[0]),
        out=lambda wildcards, output: folder_of(output[0]),
        n_shards=config["shards"]["count"],
        seed=config["shards"]["seed"],
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/shard.log",
    benchmark:
        f"{RESULTS}/benchmarks/shard.tsv"
    shell:
        "kge shard --root {params.root} --out {params.out} --shards {params.n_shards} --seed {params.seed} 2> {log}"

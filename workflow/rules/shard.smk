# Training triples -> Parquet partitioned by BESS bucket (head shard, tail shard); features by shard.
# shard_meta.json is written last, so its presence means the whole directory is complete.

rule shard:
    input:
        DATASET_OK,
    output:
        f"{SHARDS}/shard_meta.json",
    params:
        root=ROOT,
        out=SHARDS,
        n_shards=config["shards"]["count"],
        seed=config["shards"]["seed"],
    log:
        f"{RESULTS}/logs/shard.log",
    benchmark:
        f"{RESULTS}/benchmarks/shard.tsv"
    shell:
        "kge shard --root {params.root} --out {params.out} --shards {params.n_shards} --seed {params.seed} 2> {log}"

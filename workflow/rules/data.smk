# Get the dataset into the OGB WikiKG90Mv2 layout, then validate every array once (dataset.ok).

if DATASET == "mini":

    rule dataset_mini:
        output:
            DATASET_OK,
        params:
            root=lambda wildcards, output: folder_of(output[0]),
            seed=config["mini"]["seed"],
            scale=config["mini"]["scale"],
        conda:
            "../../envs/kge.yaml"
        log:
            f"{RESULTS}/logs/dataset.log",
        benchmark:
            f"{RESULTS}/benchmarks/dataset.tsv"
        shell:
            "(kge data mini --out {params.root} --seed {params.seed} --scale {params.scale}"
            " && kge data check --root {params.root} --stamp {output}) 2> {log}"

elif DATASET == "scaled":

    rule dataset_scaled:
        output:
            DATASET_OK,
        params:
            root=lambda wildcards, output: folder_of(output[0]),
            fraction=config["scaled"]["fraction"],
            seed=config["scaled"]["seed"],
        conda:
            "../../envs/kge.yaml"
        log:
            f"{RESULTS}/logs/dataset.log",
        benchmark:
            f"{RESULTS}/benchmarks/dataset.tsv"
        shell:
            "(kge data scaled --out {params.root} --fraction {params.fraction} --seed {params.seed}"
            " && kge data check --root {params.root} --stamp {output}) 2> {log}"

elif DATASET == "wikikg90mv2":

    rule dataset_download:
        output:
            DATASET_OK,
        params:
            root=lambda wildcards, output: folder_of(output[0]),
        conda:
            "../../envs/kge.yaml"
        log:
            f"{RESULTS}/logs/dataset.log",
        benchmark:
            f"{RESULTS}/benchmarks/dataset.tsv"
        shell:
            "(kge data download --out {params.root} && kge data check --root {params.root} --stamp {output}) 2> {log}"

else:

    rule dataset_import:
        input:
            **{split: config["import"][split] for split in ("train", "valid", "test", "entity_features") if config["import"].get(split)},
        output:
            DATASET_OK,
        params:
            root=lambda wildcards, output: folder_of(output[0]),
            fmt=f"--format {config['import']['format']}" if config["import"].get("format") else "",
            optional=" ".join(
                f"--{flag} {config['import'][key]}" for key, flag in (("test", "test"), ("entity_features", "entity-features"))
                if config["import"].get(key)
            ),
        conda:
            "../../envs/kge.yaml"
        log:
            f"{RESULTS}/logs/dataset.log",
        benchmark:
            f"{RESULTS}/benchmarks/dataset.tsv"
        shell:
            "(kge data import --train {input.train} --valid {input.valid} {params.optional} --out {params.root} {params.fmt}"
            " && kge data check --root {params.root} --stamp {output}) 2> {log}"

# Get the dataset into the OGB WikiKG90Mv2 layout, then validate every array once (dataset.ok).

if DATASET == "mini":

    rule dataset_mini:
        output:
            DATASET_OK,
        params:
            root=ROOT,
            seed=config["mini"]["seed"],
            scale=config["mini"]["scale"],
        log:
            f"{RESULTS}/logs/dataset.log",
        benchmark:
            f"{RESULTS}/benchmarks/dataset.tsv"
        shell:
            "(kge data mini --out {params.root} --seed {params.seed} --scale {params.scale}"
            " && kge data check --root {params.root} --stamp {output}) 2> {log}"

elif DATASET == "wikikg90mv2":

    rule dataset_download:
        output:
            DATASET_OK,
        params:
            root=ROOT,
        log:
            f"{RESULTS}/logs/dataset.log",
        benchmark:
            f"{RESULTS}/benchmarks/dataset.tsv"
        shell:
            "(kge data download --out {params.root} && kge data check --root {params.root} --stamp {output}) 2> {log}"

else:

    rule dataset_import:
        input:
            train=config["import"]["train"],
            valid=config["import"]["valid"],
            test=config["import"]["test"],
        output:
            DATASET_OK,
        params:
            root=ROOT,
            fmt=f"--format {config['import']['format']}" if config["import"].get("format") else "",
        log:
            f"{RESULTS}/logs/dataset.log",
        shell:
            "(kge data import --train {input.train} --valid {input.valid} --test {input.test} --out {params.root} {params.fmt}"
            " && kge data check --root {params.root} --stamp {output}) 2> {log}"

# The OGB submission files, written by ogb's own save_test_submission after range and duplicate checks.

rule submit:
    input:
        ensemble=f"{RESULTS}/ensemble/ensemble.npz",
        summary=f"{RESULTS}/ensemble/summary.json",
    output:
        SUBMISSION_FILES,
        metadata=f"{RESULTS}/submission/metadata.json",
        leaderboard=f"{RESULTS}/submission/leaderboard.txt",
    params:
        root=ROOT,
        ensemble=lambda wildcards, input: folder_of(input.ensemble),
        out=lambda wildcards, output: folder_of(output.metadata),
        answers=f"--answers {ROOT}/mini-answers" if DATASET in ("mini", "scaled") else "",
    conda:
        "../../envs/kge.yaml"
    log:
        f"{RESULTS}/logs/submit.log",
    shell:
        "kge submit --root {params.root} --ensemble-dir {params.ensemble} --out-dir {params.out} {params.answers} > {log} 2>&1"

#!/usr/bin/env bash
# The GPU checks of issue 13 in one short script, for a session that is lent a CUDA machine
# (run from the repository root; results land in $OUT, default benchmarks/results/gpu).
#   1. the CUDA tests: the compile backend (Triton) against the float64 reference, the optimizer,
#      the phase timer off during training
#   2. the distance variants against DistMult at the paper's shape, training and top-100, on CUDA
#   3. the whole-step figures of kge bench at the paper's shapes
# About 5-8 minutes on one GPU, most of it torch.compile's first compilations.
set -euo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
python -m pytest -q -n 0 tests/test_fused_distance.py tests/test_optim.py tests/test_train_phases.py -k cuda 2>&1 | tail -5 | tee "$OUT/pytest_cuda.txt"
python benchmarks/distance_bench.py --label cuda --steps 20 --queries 4000 --out "$OUT/distance_bench.jsonl" > "$OUT/distance_bench.md"
for fn in "distmult" "complex" "transe --distance 1" "transe --distance 2" "rotate --distance 1" "transh --distance 1"; do
  python -m kge bench train --score-fn $fn --dim 256 --batch 512 --negatives 1536 --steps 50 --device cuda >> "$OUT/bench_train.jsonl"
done
python -m kge bench train --score-fn distmult --dim 128 --batch 16 --negatives 16 --steps 200 --device cuda --no-features >> "$OUT/bench_train.jsonl"  # fixed per-step cost
cat "$OUT/distance_bench.md"

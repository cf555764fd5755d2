#!/usr/bin/env bash
# What only a GPU can check, in one run sized for a short device session (issue 11,
# item 4): the CUDA tests (captured training and inference steps replay like eager ones),
# HMRNN against cuDNN's LSTM at the target and the paper's sizes, its training iteration
# also replayed as a CUDA graph, and the example's training clips/s at the paper's scale.
# Logs and result tables go to the folder given (default benchmarks/results/gpu).
#
# From the repository root, on a machine with a CUDA GPU and torch, pytest, hypothesis
# and numpy (nothing to install: the project runs from the working tree):
#
#     bash benchmarks/gpu_checks.sh "$OUT"
set -uo pipefail

out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONPATH=.

checks() {
    local status=0
    python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || return 1
    echo "== CUDA tests ($SECONDS s)"
    python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_no_host_sync.py \
        tests/test_hmrnn.py::test_runs_on_cuda || status=1
    echo "== HMRNN against cuDNN's LSTM ($SECONDS s)"
    python benchmarks/hmrnn_vs_lstm.py --sizes target,paper --device cuda --cuda-graph \
        --rounds 2 --repeats 10 --out "$out" || status=1
    echo "== the example's training clips/s ($SECONDS s)"
    if python benchmarks/train_throughput.py --device cuda; then
        for file in benchmarks/results/train_throughput_*; do
            [[ $file == *_cpu.* ]] || cp "$file" "$out"/
        done
    else
        status=1
    fi
    echo "== done ($SECONDS s), status $status"
    return "$status"
}

checks 2>&1 | tee "$out/gpu_checks.log"
exit "${PIPESTATUS[0]}"

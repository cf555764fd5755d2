#!/usr/bin/env bash
# What only a GPU can check, in one run meant for a short device session (issue 11,
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
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # the log keeps what ran if the session's time runs out
export STOCHRNN_NATIVE=0   # the CPU kernels: not needed here, and not built in every process

checks() {
    local status=0
    python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || return 1
    echo "== tests ($SECONDS s)"
    python -m pytest -q -p no:cacheprovider tests/test_cuda.py \
        tests/test_hmrnn.py::test_runs_on_cuda || status=1
    echo "== HMRNN against cuDNN's LSTM ($SECONDS s)"
    python benchmarks/hmrnn_vs_lstm.py --sizes target,paper --device cuda --cuda-graph \
        --rounds 2 --repeats 10 --out "$out" || status=1
    echo "== the example's training clips/s ($SECONDS s)"
    python benchmarks/train_throughput.py --device cuda --out "$out" || status=1
    echo "== done ($SECONDS s), status $status"
    return "$status"
}

checks 2>&1 | tee "$out/gpu_checks.log"
exit "${PIPESTATUS[0]}"

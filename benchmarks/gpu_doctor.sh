#!/usr/bin/env bash
# `make doctor`'s GPU checks on a host with a GPU but without Docker (a lent GPU machine, a cluster
# node): nvidia-smi on the host, the driver against the CUDA build of torch in the local train
# environment (built from requirements/train.lock by `make setup`), torch's view of the GPU, /dev/shm,
# free disk and the datasets. --cpu: the same checks with the GPU ones skipped (the suite's smoke test).
#
#   bash benchmarks/gpu_doctor.sh [--cpu] [EXP]      (VENV=<dir> for other environments; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
gpu=1
if [[ "${1:-}" == "--cpu" ]]; then gpu=0; shift; fi
exp="${1:-citypersons}"
GPU=$gpu exec python3 -m services.doctor --config "configs/$exp.yaml" --local "${VENV:-.venv}"

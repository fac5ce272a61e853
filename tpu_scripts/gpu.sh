#!/usr/bin/env bash
# GPU nodes: one host with N GPUs, or several hosts with jax.distributed.
#
#   tpu_scripts/gpu.sh --config=configs/softmcl.py --workdir=runs/a [-- --config.x=y ...]
#       one host: JAX sees all its GPUs and the mesh spans them (CUDA_VISIBLE_DEVICES to limit).
#   tpu_scripts/gpu.sh --nodes=4 --node_rank=$RANK --coordinator=host0:29500 --checkpoint_dir=/shared/ckpt ...
#       run on every node (same arguments, its own rank); under SLURM the rank, node count and
#       coordinator are taken from SLURM_PROCID, SLURM_NNODES and the first host of
#       SLURM_JOB_NODELIST when not given.
# Checkpoints must be on storage all nodes see. DRY_RUN=1 prints the command.
set -euo pipefail
CONFIG="configs/softmcl.py"; WORKDIR="runs/gpu"; NODES="${SLURM_NNODES:-1}"
RANK="${SLURM_PROCID:-0}"; COORD=""; CKPT=""; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config=*) CONFIG=${1#*=} ;;        --workdir=*) WORKDIR=${1#*=} ;;
    --nodes=*) NODES=${1#*=} ;;          --node_rank=*) RANK=${1#*=} ;;
    --coordinator=*) COORD=${1#*=} ;;    --checkpoint_dir=*) CKPT=${1#*=} ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
args=(python main.py "--config=$CONFIG" "--workdir=$WORKDIR")
[[ -n "$CKPT" ]] && args+=("--config.checkpoint_dir=$CKPT")
if [[ "$NODES" -gt 1 ]]; then
  if [[ -z "$COORD" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
    COORD="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):29500"
  fi
  [[ -n "$COORD" ]] || { echo "gpu.sh: --coordinator=host:port is required with --nodes>1" >&2; exit 2; }
  [[ -n "$CKPT" ]] || { echo "gpu.sh: --checkpoint_dir on shared storage is required with --nodes>1" >&2; exit 2; }
  args+=(--distributed "--coordinator_address=$COORD" "--num_processes=$NODES" "--process_id=$RANK")
fi
args+=("${EXTRA[@]}")
if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${args[@]}"; echo; else exec "${args[@]}"; fi

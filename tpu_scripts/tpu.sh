#!/usr/bin/env bash
# TPU VM lifecycle for softmcl_jax: the same main.py on every host of a pod slice.
#
#   tpu_scripts/tpu.sh create   --name=smcl --zone=us-central2-b --type=v4-8 [--spot]
#   tpu_scripts/tpu.sh install  --name=smcl --zone=us-central2-b [--repo=URL] [--ref=main]
#   tpu_scripts/tpu.sh data     --name=smcl --zone=us-central2-b --bucket=gs://B [--src=../shared/data]
#   tpu_scripts/tpu.sh prepare  --name=smcl --zone=us-central2-b --bucket=gs://B --out=reviews \
#                               [--config=configs/softmcl.py] [-- --config.data.source=text ...]
#   tpu_scripts/tpu.sh launch   --name=smcl --zone=us-central2-b --bucket=gs://B --run=r1 \
#                               [--config=configs/softmcl.py] [-- --config.total_steps=20000 ...]
#   tpu_scripts/tpu.sh status   --name=smcl --zone=us-central2-b
#   tpu_scripts/tpu.sh resume   --name=smcl --zone=us-central2-b --type=v4-8 --bucket=gs://B --run=r1
#   tpu_scripts/tpu.sh teardown --name=smcl --zone=us-central2-b
#
# --type: v4-8 ... v4-4096, v5litepod-1 ... v5litepod-256 (v5e), v5p-8 ... (v5p).
# Checkpoints go to gs://B/runs/RUN/checkpoints (every host must see them; a preempted VM loses its
# disk). `resume` recreates a preempted VM, reinstalls and relaunches the same command, which
# restores the newest checkpoint. `prepare` runs `python -m softmcl_jax.data.prepare` once, on
# worker 0 with all its cores, into ~/prepared/OUT, copies it to gs://B/prepared/OUT and from there
# to every host (ArrayRecord reads local files); train on it with
# `launch ... -- --config.data.source=prepared --config.data.path=~/prepared/OUT` (or a mixture).
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

cmd=${1:-help}; shift || true
NAME=""; ZONE=""; TYPE="v4-8"; SPOT=""; PROJECT=""; BUCKET=""; RUN="run"; SRC="../shared/data"
REPO="${SOFTMCL_REPO:-https://github.com/OWNER/softmcl_jax.git}"; REF="main"
CONFIG="configs/softmcl.py"; OUT=""; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME=${1#*=} ;;           --zone=*) ZONE=${1#*=} ;;
    --type=*) TYPE=${1#*=} ;;           --spot) SPOT=1 ;;
    --project=*) PROJECT=${1#*=} ;;     --bucket=*) BUCKET=${1%/}; BUCKET=${BUCKET#*=} ;;
    --run=*) RUN=${1#*=} ;;             --src=*) SRC=${1#*=} ;;
    --repo=*) REPO=${1#*=} ;;           --ref=*) REF=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;       --out=*) OUT=${1#*=} ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "tpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

run() { if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
need() { for v in "$@"; do [[ -n "${!v}" ]] || { echo "tpu.sh $cmd: --${v,,} is required" >&2; exit 2; }; done; }
gc=(gcloud compute tpus tpu-vm); [[ -n "$PROJECT" ]] && gc+=(--project "$PROJECT")
on_all() { run "${gc[@]}" ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"; }

runtime_version() {  # the TPU software image for each generation
  case "$TYPE" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    *) echo "tpu.sh: unsupported --type=$TYPE (v4-*, v5litepod-*, v5p-*)" >&2; exit 2 ;;
  esac
}

train_command() {
  local ckpt="$BUCKET/runs/$RUN/checkpoints" extra=""
  [[ ${#EXTRA[@]} -gt 0 ]] && extra=$(printf ' %q' "${EXTRA[@]}")
  # Every host runs the same command; --distributed lets JAX find its peers on the slice.
  echo "cd ~/softmcl_jax && nohup .venv/bin/python main.py --config=$CONFIG --workdir=\$HOME/runs/$RUN" \
       "--config.checkpoint_dir=$ckpt --distributed$extra" \
       "> \$HOME/$RUN.log 2>&1 &"
}

prepare_command() {
  local extra=""
  [[ ${#EXTRA[@]} -gt 0 ]] && extra=$(printf ' %q' "${EXTRA[@]}")
  # Once, not on every host: the output is the same bytes wherever it is made.
  echo "cd ~/softmcl_jax && .venv/bin/python -m softmcl_jax.data.prepare --config=$CONFIG" \
       "--out=\$HOME/prepared/$OUT --workers=\$(nproc)$extra" \
       "&& gsutil -m rsync -r \$HOME/prepared/$OUT $BUCKET/prepared/$OUT"
}

case "$cmd" in
  create)
    need NAME ZONE
    args=(create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" --version "$(runtime_version)")
    [[ -n "$SPOT" ]] && args+=(--spot)
    run "${gc[@]}" "${args[@]}" ;;
  install)
    need NAME ZONE
    on_all "set -e; (test -d ~/softmcl_jax || git clone $REPO ~/softmcl_jax) && cd ~/softmcl_jax \
&& git fetch -q origin && git checkout -q $REF && python3 -m venv .venv \
&& .venv/bin/pip install -q -U pip && .venv/bin/pip install -q 'jax[tpu]' -e ." ;;
  data)
    need NAME ZONE BUCKET
    run gsutil -m rsync -r "$SRC" "$BUCKET/data"
    on_all "mkdir -p ~/data && gsutil -m rsync -r $BUCKET/data ~/data" ;;
  prepare)
    need NAME ZONE BUCKET OUT
    run "${gc[@]}" ssh "$NAME" --zone "$ZONE" --worker=0 --command "$(prepare_command)"
    on_all "mkdir -p ~/prepared/$OUT && gsutil -m rsync -r $BUCKET/prepared/$OUT ~/prepared/$OUT" ;;
  launch)
    need NAME ZONE BUCKET
    on_all "$(train_command)" ;;
  status)
    need NAME ZONE
    run "${gc[@]}" describe "$NAME" --zone "$ZONE" --format="value(state)"
    on_all "tail -n 3 ~/*.log" ;;
  resume)
    need NAME ZONE BUCKET
    state=$(DRY_RUN= "${gc[@]}" describe "$NAME" --zone "$ZONE" --format="value(state)" 2>/dev/null \
            || echo MISSING)
    if [[ "$state" == PREEMPTED || "$state" == MISSING || "$state" == TERMINATED ]]; then
      [[ "$state" != MISSING ]] && run "${gc[@]}" delete "$NAME" --zone "$ZONE" --quiet
      "$0" create --name="$NAME" --zone="$ZONE" --type="$TYPE" ${SPOT:+--spot} \
        ${PROJECT:+--project="$PROJECT"}
      "$0" install --name="$NAME" --zone="$ZONE" --repo="$REPO" --ref="$REF" \
        ${PROJECT:+--project="$PROJECT"}
    fi
    on_all "$(train_command)" ;;
  teardown)
    need NAME ZONE
    run "${gc[@]}" delete "$NAME" --zone "$ZONE" --quiet ;;
  *)
    sed -n '2,26p' "$0"; exit 2 ;;
esac

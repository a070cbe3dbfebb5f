#!/usr/bin/env bash
# Run a jaxlm command on every worker of a Cloud TPU VM pod slice.
#   launch/tpu_pod.sh TPU_NAME ZONE jaxlm train configs/gpt2-small.yaml mesh.fsdp=-1 mesh.data=1
# Assumes the repo is checked out at ~/jaxlm on every worker with `make .venv/.installed-core`
# run there (jax[tpu] installed). JAX finds the other workers itself (JAXLM_DISTRIBUTED=auto);
# every worker must see the same run.out_dir (a gs:// bucket or shared disk) for checkpoints.
set -euo pipefail
name=$1 zone=$2
shift 2
cmd=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all \
  --command "cd ~/jaxlm && JAXLM_DISTRIBUTED=auto PATH=\$PWD/.venv/bin:\$PATH $cmd"

#!/usr/bin/env bash
# Multi-node DDP on SLURM through submitit (hydra/launcher=slurm): 2 nodes x 4 GPUs by default.
#
# Run it on a login node, from anywhere:
#   PARTITION=gpu scripts/slurm_multinode.sh                          # the default toy run, as a check
#   PARTITION=gpu NODES=4 GPUS=8 scripts/slurm_multinode.sh experiment=cifar10_ddpm trainer.max_steps=800000
#   PARTITION=gpu scripts/slurm_multinode.sh schedule=linear,cosine  # a sweep: one 2x4 job per schedule
#
# ddpm-train submits one SLURM job per sweep point (one task per GPU, Lightning reads its rank from SLURM)
# and waits for them, then writes the sweep summary: run it under tmux/screen or nohup. Output:
# outputs/<task>/multiruns/<time>/<job number>/; sbatch scripts and logs in that folder's .submitit/.
# Jobs are requeued on preemption and, up to max_num_timeout times, at the time limit; they resume from
# their own checkpoints/last.ckpt (DDPM_CKPT_PATH=auto, set by the launcher config).
#
# To adapt: ACCOUNT / QOS / TIMEOUT_MIN / MEM_GB / CPUS below, any hydra.launcher.* key of
# conf/hydra/launcher/slurm.yaml as an argument (e.g. 'hydra.launcher.setup=[module load cuda/12.4]'), and
# the batch size per GPU (data.batch_size): the global batch is batch_size x GPUS x NODES.
# The compute nodes run this checkout's .venv/bin/python: both must be on a filesystem the nodes share.
set -euo pipefail

: "${PARTITION:?set PARTITION to the GPU partition of your cluster (sinfo -s)}"
NODES="${NODES:-2}"
GPUS="${GPUS:-4}"                # GPUs per node = SLURM tasks per node = Lightning devices
CPUS="${CPUS:-8}"                # CPU cores per GPU process (data loading)
MEM_GB="${MEM_GB:-64}"           # memory per node
TIMEOUT_MIN="${TIMEOUT_MIN:-240}"

launcher=(
  "hydra/launcher=slurm"
  "hydra.launcher.partition=${PARTITION}"
  "hydra.launcher.gpus_per_node=${GPUS}"
  "hydra.launcher.cpus_per_task=${CPUS}"
  "hydra.launcher.mem_gb=${MEM_GB}"
  "hydra.launcher.timeout_min=${TIMEOUT_MIN}"
)
[[ -n "${ACCOUNT:-}" ]] && launcher+=("hydra.launcher.account=${ACCOUNT}")
[[ -n "${QOS:-}" ]] && launcher+=("hydra.launcher.qos=${QOS}")

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# trainer=ddp uses every GPU a task sees (devices: -1); hydra.launcher.nodes follows trainer.num_nodes
exec uv run ddpm-train -m "${launcher[@]}" trainer=ddp "trainer.num_nodes=${NODES}" "$@"

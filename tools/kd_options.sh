#!/usr/bin/env bash
# The options every KD recipe's run.sh shares: teacher, seeds, devices, cache, audio, folders and
# overrides. Source it where the recipe declares its defaults (before parse_options.sh), and add
# $kd_options to the recipe's $options; --help reads the meanings below (option_files).
teacher_seed=1                # the teacher's seed (an integer)
seeds="1"                     # student seeds (integers, e.g. "1 2 3")
ngpu=1                        # > 1 launches torchrun (DDP), one process per device (per node)
nnodes=1                      # > 1: a multi-node run of stages 2-6, one run.sh per node
node_rank=0                   # this node's rank, 0 .. nnodes-1 (0 writes the stage records)
master_addr=""                # node 0's host name or address, reachable from every node
master_port=29500             # a free TCP port on node 0 (torchrun's rendezvous)
rdzv_endpoint=""              # HOST:PORT of a c10d rendezvous, instead of master_addr/port
device=auto                   # auto | cpu | cuda | cuda:N
use_cache=true                # true | false: KD students read stage 3's teacher cache
check_cache=0                 # stage 3: re-run the live teacher on N cached items and compare
allow_unfinished_teacher=false  # true | false: stages 3 and 5 accept an unfinished teacher
teacher_source=""             # a pretrained teacher, no stage 2: a hub-format folder (absolute path),
                              # a hub id owner/name (needs the network) or a registered name
trust_teacher_code=false      # true | false: --teacher_source's hyperparams.yaml may run any code
sample_rate=16000             # Hz: stage 1 converts to it, training reads at it
convert=auto                  # stage-1 conversion: auto | sox | soundfile | none
nj=0                          # stage 1's parallel jobs, as Kaldi's --nj (0: one per CPU core, at most 4)
data_dir=data                 # prepared manifests (stage 1)
exp_dir=exp                   # run folders, teacher cache and RESULTS.md (stages 2-8)
python=python3                # the Python interpreter that has kd_modules' requirements
extra_args=""                 # HyperPyYAML overrides for every run, e.g. "--number_of_epochs 30"
teacher_args=""               # overrides for the teacher only (stage 2)
kd_args=""                    # KD students only (stages 3, 5, 7): "--tau 2", "--cache_shard_seconds 30"
tensorboard=false             # true | false: each run writes TensorBoard events (<run>/tensorboard)
quantize=false                # true | false: stage 9 also writes an int8 ONNX model
export_teacher=false          # true | false: stage 9 exports the teacher too, not only the students

# shellcheck disable=SC2034  # read by the sourcing run.sh and by parse_options.sh
kd_options="teacher_seed seeds ngpu device use_cache check_cache allow_unfinished_teacher
teacher_source trust_teacher_code
sample_rate convert nj data_dir exp_dir python extra_args teacher_args kd_args tensorboard quantize
export_teacher nnodes node_rank master_addr master_port rdzv_endpoint"
option_files="${option_files:-} ${BASH_SOURCE[0]}"

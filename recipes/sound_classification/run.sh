#!/usr/bin/env bash
# Sound classification (ESC-50, UrbanSound8K, AudioMNIST, FSDD): teacher, student alone and KD
# students (Hinton KD, FitNets, SP). Stages follow the repository's convention:
#   0 check  1 prepare  2 teacher  3 teacher cache  4 student alone  5 KD students
#   6 (data-free synthesis: FRAMI, not in this recipe yet)  7 evaluate  8 report
# Re-running the same command resumes: finished stages are skipped, training resumes from the
# last checkpoint. Example:
#   ./run.sh --dataset urbansound8k --data_root /data/UrbanSound8K --folds "1 2" --seeds "1 2 3"
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)

stage=0
stop_stage=8
dataset=fsdd                  # esc50 | urbansound8k | audiomnist | fsdd
data_root=""                  # the dataset's official layout (see README.md)
split=official                # official | seeded (a seeded grouped split, for partial copies)
folds=""                      # default: every official fold of the dataset ("1" when seeded)
methods="kd fitnets sp"       # KD methods of stage 5 (hparams/kd/<method>.yaml)
students="xvector_small"      # student architectures (hparams/student/<arch>.yaml)
teacher=xvector_large         # teacher architecture (hparams/teacher/<arch>.yaml)
teacher_seed=1
seeds="1"                     # student seeds
ngpu=1                        # > 1 launches torchrun (DDP), one process per device
device=auto                   # auto | cpu | cuda | cuda:N
use_cache=true                # KD students read stage 3's teacher cache
sample_rate=16000
convert=auto                  # stage-1 conversion: auto | sox | soundfile | none
download=false                # stage 0 downloads the official release when --data_root is empty
update_readme=false           # stage 8 also writes the table into README.md's results section
data_dir=data
exp_dir=exp
python=python3
extra_args=""                 # HyperPyYAML overrides for every run, e.g. "--number_of_epochs 30"
teacher_args="--augment True" # overrides for the teacher only (stage 2): SpecAugment-style masking

options="stage stop_stage dataset data_root split folds methods students teacher teacher_seed
seeds ngpu device use_cache sample_rate convert download update_readme data_dir exp_dir python extra_args
teacher_args"
help_message="Usage: $0 [options]   (stages 0-8, see the header of this script and README.md)"
. "$root/tools/parse_options.sh"

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "$(date '+%F %T') [run.sh] $*"; }
want() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

case "$dataset" in
    esc50) official_folds="1 2 3 4 5" ;;
    urbansound8k) official_folds="1 2 3 4 5 6 7 8 9 10" ;;
    audiomnist) official_folds="1 2 3 4 5" ;;
    fsdd) official_folds="1" ;;
    *) echo "$0: unknown --dataset '$dataset' (esc50|urbansound8k|audiomnist|fsdd)" >&2; exit 1 ;;
esac
if [ -z "$folds" ]; then
    if [ "$split" = seeded ]; then folds="1"; else folds="$official_folds"; fi
fi
if [ "$device" = auto ]; then
    device=$($python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
fi
case "$use_cache" in true) cache_flag=True ;; false) cache_flag=False ;;
    *) echo "$0: --use_cache must be true or false" >&2; exit 1 ;; esac

# launch SCRIPT ARGS...: one process, or torchrun with --ngpu processes (DDP)
launch() {
    local script=$1; shift
    if [ "$ngpu" -gt 1 ]; then
        local backend=nccl
        [[ "$device" == cpu ]] && backend=gloo
        $python -m torch.distributed.run --standalone --nproc_per_node="$ngpu" "$script" "$@" \
            --distributed_backend "$backend"
    else
        $python "$script" "$@"
    fi
}

yaml() { echo "hparams/common.yaml hparams/$1 hparams/kd/$2.yaml"; }
fold_args() {
    local fold=$1
    echo "--data_folder $data_dir/$dataset/fold$fold --dataset $dataset --fold $fold" \
        "--n_classes $n_classes --exp_root $exp_dir --device $device" \
        "--sample_rate $sample_rate $extra_args"
}
teacher_folder() { echo "$exp_dir/$dataset/fold$1/teacher/$teacher/none/seed$teacher_seed"; }
student_folder() { echo "$exp_dir/$dataset/fold$1/student/$2/$3/seed$4"; }

if want 0; then
    log "stage 0: checking the environment and the dataset root"
    $python -c "import kd_modules, speechbrain, torch; print('torch', torch.__version__, \
'speechbrain', speechbrain.__version__, 'cuda', torch.cuda.is_available())"
    if [ "$stop_stage" -ge 1 ] && [ ! -f "$data_dir/$dataset/.done" ]; then
        if [ -z "$data_root" ] && [ "$download" = true ]; then
            data_root=$(local/download.sh "$dataset" "$data_dir/downloads")
        fi
        if [ -z "$data_root" ]; then
            echo "$0: --data_root is required (the $dataset official layout; see README.md)." >&2
            echo "  Or add --download true to fetch the official release (README.md, Datasets)." >&2
            exit 1
        fi
        [ -d "$data_root" ] || { echo "$0: --data_root $data_root does not exist" >&2; exit 1; }
    fi
    command -v sox >/dev/null && log "SoX found: stage 1 converts audio with SoX" \
        || log "SoX not found: stage 1 converts with soundfile + torchaudio's resampler"
fi

if want 1; then
    log "stage 1: preparing $dataset manifests ($split split, folds: $folds)"
    # shellcheck disable=SC2086
    $python local/prepare.py --dataset "$dataset" --data_root "${data_root:-.}" \
        --out_dir "$data_dir/$dataset" --split "$split" --folds $folds \
        --sample_rate "$sample_rate" --convert "$convert"
fi
[ -f "$data_dir/$dataset/labels.json" ] || { echo "$0: run stage 1 first" >&2; exit 1; }
n_classes=$($python -c "import json; print(len(json.load(open('$data_dir/$dataset/labels.json'))))")

for fold in $folds; do
    tdir=$(teacher_folder "$fold")
    # shellcheck disable=SC2046
    if want 2; then
        log "stage 2: teacher $teacher, fold $fold -> $tdir"
        launch train.py $(yaml "teacher/$teacher.yaml" none) $(fold_args "$fold") \
            --role teacher --seed "$teacher_seed" --output_folder "$tdir" --skip_test True \
            $teacher_args
    fi
    first_student=${students%% *}
    if want 3 && [ "$use_cache" = true ]; then
        for method in $methods; do
            log "stage 3: teacher cache for $method, fold $fold"
            # shellcheck disable=SC2046
            $python cache_teacher.py $(yaml "student/$first_student.yaml" "$method") \
                $(fold_args "$fold") --output_folder "$tdir" --teacher_folder "$tdir"
        done
    fi
    for arch in $students; do
        for seed in $seeds; do
            if want 4; then
                sdir=$(student_folder "$fold" "$arch" none "$seed")
                log "stage 4: student $arch alone, fold $fold, seed $seed -> $sdir"
                # shellcheck disable=SC2046
                launch train.py $(yaml "student/$arch.yaml" none) $(fold_args "$fold") \
                    --seed "$seed" --output_folder "$sdir" --skip_test True
            fi
            if want 5; then
                for method in $methods; do
                    sdir=$(student_folder "$fold" "$arch" "$method" "$seed")
                    log "stage 5: student $arch with $method, fold $fold, seed $seed -> $sdir"
                    # shellcheck disable=SC2046
                    launch train.py $(yaml "student/$arch.yaml" "$method") $(fold_args "$fold") \
                        --seed "$seed" --output_folder "$sdir" --teacher_folder "$tdir" \
                        --use_teacher_cache "$cache_flag" --skip_test True
                done
            fi
        done
    done
done

if want 6; then
    log "stage 6: data-free synthesis (FRAMI) is not part of this recipe yet: skipped"
fi

# evaluate RUN_DIR COMPOSITION ARGS...: test the best-validation checkpoint, once
evaluate() {
    local dir=$1; shift
    if [ -f "$dir/results.json" ] && [ "$dir/results.json" -nt "$dir/train_info.json" ]; then
        log "stage 7: $dir already evaluated"
        return
    fi
    [ -f "$dir/train_info.json" ] || { echo "$0: $dir is not trained (stages 2/4/5)" >&2; exit 1; }
    log "stage 7: evaluating $dir"
    $python train.py "$@" --output_folder "$dir" --test_only
}

if want 7; then
    for fold in $folds; do
        tdir=$(teacher_folder "$fold")
        # shellcheck disable=SC2046
        evaluate "$tdir" $(yaml "teacher/$teacher.yaml" none) $(fold_args "$fold") \
            --role teacher --seed "$teacher_seed" $teacher_args
        for arch in $students; do
            for seed in $seeds; do
                # shellcheck disable=SC2046
                evaluate "$(student_folder "$fold" "$arch" none "$seed")" \
                    $(yaml "student/$arch.yaml" none) $(fold_args "$fold") --seed "$seed"
                for method in $methods; do
                    # shellcheck disable=SC2046
                    evaluate "$(student_folder "$fold" "$arch" "$method" "$seed")" \
                        $(yaml "student/$arch.yaml" "$method") $(fold_args "$fold") \
                        --seed "$seed" --teacher_folder "$tdir"
                done
            done
        done
    done
fi

if want 8; then
    log "stage 8: collecting results into $exp_dir/$dataset/RESULTS.md"
    readme_flag=()
    [ "$update_readme" = true ] && readme_flag=(--readme README.md)
    $python -m kd_modules.results "$exp_dir/$dataset" --out "$exp_dir/$dataset/RESULTS.md" \
        --title "Sound classification: $dataset ($split split, folds $folds, seeds $seeds)" \
        "${readme_flag[@]}"
fi
log "done"

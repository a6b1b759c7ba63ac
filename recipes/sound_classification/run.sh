#!/usr/bin/env bash
# Sound classification (ESC-50, UrbanSound8K, AudioMNIST, FSDD): teacher, student alone and KD
# students (Hinton KD, FitNets, SP). Stages follow the repository's convention:
#   0 check  1 prepare  2 teacher  3 teacher cache  4 student alone  5 KD students
#   6 data-free KD (synthesise a pool per synthesiser, distil on it)  7 evaluate  8 report
#   9 export (TorchScript, ONNX, int8 ONNX; opt-in: --stage 9 --stop_stage 9)
# Re-running the same command resumes: finished stages are skipped, training resumes from the
# last checkpoint. Example:
#   ./run.sh --dataset urbansound8k --data_root /data/UrbanSound8K --folds "1 2" --seeds "1 2 3"
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)

stage=0                       # first stage to run (0-9)
stop_stage=8                  # last stage to run (0-9; 9, export, runs only when asked)
dataset=fsdd                  # esc50 | urbansound8k | audiomnist | fsdd
data_root=""                  # the dataset's official layout (see README.md)
split=official                # official | seeded (a seeded grouped split, for partial copies)
folds=""                      # default: the prepared folds, else every official fold ("1" seeded)
methods="kd fitnets sp"       # KD methods (hparams/kd/<method>.yaml): real-data ones go to stage 5,
                              # data-free ones (deepinversion cmi frami_noreuse frami) to stage 6
students="xvector_small"      # student architectures (hparams/student/<arch>.yaml)
teacher=""                    # teacher architecture (hparams/teacher/<arch>.yaml); default: the
                              # dataset's, with its epochs (below: fsdd cnn, urbansound8k ensemble)
# shellcheck source=../../tools/kd_options.sh
. "$root/tools/kd_options.sh"   # teacher_seed seeds ngpu device use_cache check_cache ...
augment=true                  # true | false: every run trains with SpecAugment-style masks; KD
                              # students replay the teacher's cached views (kd_modules.augment)
min_duration_s=0.14           # seconds: stage 1 skips (and counts) shorter clips
download=false                # true | false: stage 0 downloads the release when no --data_root
update_readme=false           # true | false: stage 8 also writes README.md's results table
synthesis_args=""             # overrides for stage 6 only (synthesis and data-free KD)

options="stage stop_stage dataset data_root split folds methods students teacher augment
min_duration_s download update_readme synthesis_args $kd_options"
help_message="Usage: $0 [options]   (README.md describes stages, options and outputs)
Stages: 0 check, 1 prepare, 2 teacher, 3 teacher cache, 4 student alone, 5 KD students,
        6 data-free KD (synthesis + distillation), 7 evaluate, 8 report, 9 export"
# shellcheck source=../../tools/parse_options.sh
. "$root/tools/parse_options.sh"
# shellcheck source=../../tools/stage_helpers.sh
. "$root/tools/stage_helpers.sh"

# ----- options: checked before any stage, so that a typo never costs a training run ------------
check_stage_range 9
check_choice dataset esc50 urbansound8k audiomnist fsdd
default_teacher=$([ -z "$teacher" ] && echo true || echo false)
# Each dataset's default teacher and its epochs, chosen as one that clearly beats the student alone,
# measured with 3 student seeds (README.md, "Default teachers"); the epochs are stage 2's
# number_of_epochs unless --extra_args or --teacher_args set it (both applied below).
case "$dataset" in
    fsdd) teacher=${teacher:-cnn} teacher_epochs=30 ;;
    urbansound8k) teacher=${teacher:-ensemble} teacher_epochs=30 ;;
    esc50 | audiomnist) teacher=${teacher:-xvector_large} teacher_epochs=15 ;;  # not measured here
esac
check_choice split official seeded
check_ints folds 0
check_choice augment true false
check_pattern min_duration_s '^[0-9]+([.][0-9]*)?$' 'a duration in seconds, e.g. 0.14'
check_choice download true false
check_choice update_readme true false
check_kd_options  # methods, students, teacher, seeds, device, cache, conversion, folders

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
data="$data_dir/$dataset"
data_info="$data/data_info.json"  # stage 1's facts: classes, split, folds (kd_modules.data_info)
set_kd_flags  # device (auto resolved), cache_flag, unfinished_args
augment_flag=$([ "$augment" = true ] && echo True || echo False)
kd_methods=$(methods_of kd)              # real-data KD: stages 3 and 5
datafree_methods=$(methods_of datafree)  # their kd YAML names a synthesiser: stage 6
[ -z "$teacher_source" ] || [ -z "$datafree_methods" ] || die "--methods $datafree_methods: \
data-free KD inverts the teacher on the student's features, not --teacher_source's own front end"
if [ "$default_teacher" = true ]; then
    # Data-free KD needs the statistics-pooling teacher (FRAMI reuses its pooled states): with a
    # data-free method in --methods the default is xvector_large, as in the data-free tables.
    [ -z "$datafree_methods" ] || teacher=xvector_large teacher_epochs=15
    case " $extra_args $teacher_args " in
        *" --number_of_epochs "*) ;;
        *) teacher_args="--number_of_epochs $teacher_epochs${teacher_args:+ $teacher_args}" ;;
    esac
fi

yaml() { echo "hparams/common.yaml hparams/$1 hparams/kd/$2.yaml"; }
fold_args() {
    local fold=$1
    echo "--data_folder $data/fold$fold --dataset $dataset --fold $fold" \
        "--n_classes $n_classes --exp_root $exp_dir --device $device" \
        "--sample_rate $sample_rate --augment $augment_flag $extra_args"
}
teacher_folder() { echo "$exp_dir/$dataset/fold$1/teacher/$teacher/none/seed$teacher_seed"; }
student_folder() { echo "$exp_dir/$dataset/fold$fold/student/$1/$2/seed$3"; }  # of the fold loop
pool_folder() {  # FOLD METHOD SEED: one pool per fold, teacher, synthesiser and seed
    echo "$exp_dir/$dataset/fold$1/pool/${teacher}_seed$teacher_seed/$(synthesiser "$2")/seed$3"
}

# ----- the recipe's own stages (0, 1, 6 and 8); 2-5 and 7 are tools/stage_helpers.sh's -------

check_stage() {  # 0: the environment, the dataset root (or its download), the converter
    want 0 || return 0
    log "stage 0: checking the environment and the dataset root"
    log_environment
    if [ "$stop_stage" -ge 1 ] && [ ! -f "$data/.done" ]; then
        if [ -z "$data_root" ] && [ "$download" = true ]; then
            data_root=$(local/download.sh "$dataset" "$data_dir/downloads")
        fi
        if [ -z "$data_root" ]; then
            echo "$0: --data_root is required (the $dataset official layout; see README.md)." >&2
            echo "  Or add --download true to fetch the official release (README.md, Datasets)." >&2
            exit 1
        fi
        [ -d "$data_root" ] || die "--data_root $data_root does not exist"
    fi
    if command -v sox >/dev/null; then
        log "SoX found: stage 1 converts audio with SoX"
    else
        log "SoX not found: stage 1 converts with soundfile + torchaudio's resampler"
    fi
}

prepare_stage() {  # 1: manifests per fold, labels.json, data_info.json (--folds: default all)
    want 1 || return 0
    local fold_options=() shown=${folds:-all}
    [ "$split" = official ] || shown=1
    # shellcheck disable=SC2206  # the folds are a word list
    [ -z "$folds" ] || fold_options=(--folds $folds)
    log "stage 1: preparing $dataset manifests ($split split, folds: $shown)"
    $python local/prepare.py --dataset "$dataset" --data_root "${data_root:-.}" \
        --out_dir "$data" --split "$split" "${fold_options[@]}" \
        --sample_rate "$sample_rate" --convert "$convert" --nj "$nj" \
        --min_duration_s "$min_duration_s"
}

read_prepared() {  # the prepared folds (unless --folds) and classes: stages 2-9 read them
    if [ -f "$data_info" ]; then
        [ -n "$folds" ] || folds=$(json_field "$data_info" folds)
        n_classes=$(json_field "$data_info" outputs)
    elif { [ "$stage" -le 7 ] && [ "$stop_stage" -ge 2 ]; } || want 9; then
        die "no prepared data in $data: run stage 1 first"
    fi
}

kd_stages() {  # 2-5, fold by fold: teacher, teacher cache, students alone, KD students
    [ "$stage" -le 5 ] && [ "$stop_stage" -ge 2 ] || return 0
    local tdir
    for fold in $folds; do
        tdir=$(teacher_folder "$fold")
        log_scope=", fold $fold"
        # shellcheck disable=SC2046  # word-split on purpose: the arguments of every run
        teacher_stage "$tdir" $(fold_args "$fold")
        # shellcheck disable=SC2046
        cache_stage "$tdir" "$kd_methods" $(fold_args "$fold")
        # shellcheck disable=SC2046
        student_stages "$tdir" "$kd_methods" $(fold_args "$fold")
    done
}

datafree_stage() {  # 6: a pool per fold, synthesiser and seed, and a student distilled on it
    want 6 || return 0
    if [ -z "$datafree_methods" ]; then
        log "stage 6: no data-free method in --methods (e.g. frami, deepinversion, cmi): skipped"
    fi
    local tdir arch seed method sdir pool
    for fold in $folds; do
        tdir=$(teacher_folder "$fold")
        for arch in $students; do
            for seed in $seeds; do
                for method in $datafree_methods; do
                    sdir=$(student_folder "$arch" "$method" "$seed")
                    pool=$(pool_folder "$fold" "$method" "$seed")
                    log "stage 6: $method, fold $fold, seed $seed: pool $pool -> $sdir"
                    # shellcheck disable=SC2046,SC2086
                    launch synthesize.py $(datafree_yaml "$arch" "$method") $(fold_args "$fold") \
                        --seed "$seed" --output_folder "$sdir" --teacher_folder "$tdir" \
                        --pool_folder "$pool" --skip_test True "${unfinished_args[@]}" \
                        $synthesis_args
                done
            done
        done
    done
}

evaluate_stage() {  # 7: every run of every fold, once (data-free students by synthesize.py)
    want 7 || return 0
    local tdir arch seed method
    for fold in $folds; do
        tdir=$(teacher_folder "$fold")
        # shellcheck disable=SC2046
        evaluation_stage "$tdir" "$kd_methods" $(fold_args "$fold")
        for arch in $students; do
            for seed in $seeds; do
                for method in $datafree_methods; do
                    # shellcheck disable=SC2046,SC2086
                    evaluate_once "$(student_folder "$arch" "$method" "$seed")" \
                        synthesize.py $(datafree_yaml "$arch" "$method") $(fold_args "$fold") \
                        --seed "$seed" --teacher_folder "$tdir" \
                        --pool_folder "$(pool_folder "$fold" "$method" "$seed")" $synthesis_args
                done
            done
        done
    done
}

report_stage() {  # 8: RESULTS.md (and the synthesis grid when there are data-free runs)
    want 8 || return 0
    log "stage 8: collecting results into $exp_dir/$dataset/RESULTS.md"
    $python -m kd_modules.results --matrix "$exp_dir/$dataset" \
        --out "$exp_dir/$dataset/RESULTS_MATRIX.md" \
        --title "KD methods x sound classification ($dataset)"  # + .csv, .png (kd_modules.matrix)
    local readme_flag=() data_split=$split data_folds=$folds  # the data the runs trained on
    [ "$update_readme" = true ] && readme_flag=(--readme README.md)
    if [ -f "$data_info" ]; then
        data_split=$(json_field "$data_info" split)
        data_folds=$(json_field "$data_info" folds)
    fi
    local title="Sound classification: $dataset ($data_split split, folds $data_folds, seeds $seeds)"
    $python local/report.py "$exp_dir/$dataset" --out "$exp_dir/$dataset/RESULTS.md" \
        --title "$title" "${readme_flag[@]}"  # the library's table + this recipe's data-free rows
    if [ -n "$datafree_methods" ]; then  # synthetic spectrograms per class beside real ones
        $python -m kd_modules.synthesis.figures "$exp_dir/$dataset" \
            --labels "$data/labels.json" --out "$exp_dir/$dataset/synthesis_grid.png"
    fi
}

export_runs() {  # 9: every run of every fold (data-free students too), once each
    want 9 || return 0
    for fold in $folds; do
        export_stage "$(teacher_folder "$fold")" "$kd_methods $datafree_methods" \
            --test_manifest "$data/fold$fold/test.json" --labels_file "$data/labels.json" \
            --calibration_manifest "$data/fold$fold/train.json"
    done
}

# ----- the stages ----------------------------------------------------------------------------
check_stage      # 0
prepare_stage    # 1
read_prepared
kd_stages        # 2 teacher, 3 teacher cache, 4 student alone, 5 KD students
datafree_stage   # 6
evaluate_stage   # 7
report_stage     # 8
export_runs      # 9
log "done"

#!/usr/bin/env bash
# Audio tagging on SONYC-UST v1 (DCASE 2019 Task 5): a CNN teacher, students of three sizes alone
# and with sigmoid KD, SP, IUSP, KD+SP, KD+IUSP and FitNets; the DCASE metrics and the IUSP
# paper's table. Stages follow the repository's convention:
#   0 check  1 prepare  2 teacher  3 teacher cache  4 students alone  5 KD students
#   6 data-free KD (--methods with deepinversion, cmi or frami: a pool of tag sets synthesised
#   from the teacher, a student distilled on it alone)  7 evaluate  8 report
#   9 export (TorchScript, ONNX, int8 ONNX; opt-in: --stage 9 --stop_stage 9)
# Re-running the same command resumes: finished stages are skipped, training resumes from the
# last checkpoint. Examples:
#   ./run.sh --data_root /data/sonyc-ust --seeds "1 2 3"
#   ./run.sh --standin true --device cpu --students crnn --extra_args "--number_of_epochs 2"
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)

stage=0                       # first stage to run (0-9)
stop_stage=8                  # last stage to run (0-9; 9, export, runs only when asked)
data_root=""                  # the SONYC-UST release: annotations.csv, taxonomy, train/, validate/
standin=false                 # true | false: stage 0 builds a small stand-in tree (README.md)
methods="kd sp iusp kd_sp kd_iusp fitnets"  # KD methods (hparams/kd/<method>.yaml): real-data
                              # ones go to stage 5, data-free ones (deepinversion cmi frami) to 6
students="crnn cnn_small cnn_medium"  # student architectures (hparams/student/<arch>.yaml)
teacher=cnn10                 # teacher architecture (hparams/teacher/<arch>.yaml)
synthesis_args=""             # overrides for stage 6 only (synthesis and data-free KD)
# shellcheck source=../../tools/kd_options.sh
. "$root/tools/kd_options.sh"   # teacher_seed seeds ngpu device use_cache check_cache ...

options="stage stop_stage data_root standin methods students teacher synthesis_args $kd_options"
help_message="Usage: $0 [options]   (README.md describes stages, options and outputs)
Stages: 0 check, 1 prepare, 2 teacher, 3 teacher cache, 4 students alone, 5 KD students,
        6 data-free KD (synthesis + distillation), 7 evaluate, 8 report, 9 export"
# shellcheck source=../../tools/parse_options.sh
. "$root/tools/parse_options.sh"
# shellcheck source=../../tools/stage_helpers.sh
. "$root/tools/stage_helpers.sh"

# ----- options: checked before any stage, so that a typo never costs a training run ------------
check_stage_range 9
check_choice standin true false
check_kd_options

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
data="$data_dir/sonyc_ust"
data_info="$data/data_info.json"  # stage 1's facts: the tagger's outputs (kd_modules.data_info)
exp="$exp_dir/sonyc_ust"
set_kd_flags
kd_methods=$(methods_of kd)              # real-data KD: stages 3 and 5
datafree_methods=$(methods_of datafree)  # their kd YAML names a synthesiser: stage 6
[ -z "$teacher_source" ] || [ -z "$datafree_methods" ] || die "--methods $datafree_methods: \
data-free KD inverts the teacher on the student's features, not --teacher_source's own front end"

yaml() { echo "hparams/common.yaml hparams/$1 hparams/kd/$2.yaml"; }
run_args() {
    echo "--data_folder $data --n_outputs $n_outputs --exp_root $exp_dir --device $device" \
        "--sample_rate $sample_rate $extra_args"
}
tdir="$exp/teacher/$teacher/none/seed$teacher_seed"
student_folder() { echo "$exp/student/$1/$2/seed$3"; }
pool_root="$exp/pool/${teacher}_seed$teacher_seed"  # + /<synthesiser>/seed<s>: stage 6's pools

# ----- the recipe's own stages (0, 1 and 8); 2-7 are tools/stage_helpers.sh's -------------------

check_stage() {  # 0: the environment, the release (or the stand-in, built here)
    want 0 || return 0
    log "stage 0: checking the environment and the dataset root"
    log_environment
    [ "$stop_stage" -ge 1 ] && [ ! -f "$data/.done" ] || return 0
    if [ -z "$data_root" ] && [ "$standin" = true ]; then
        data_root="$data_dir/standin"
        log "stage 0: building the stand-in tree $data_root (not SONYC-UST: README.md)"
        $python local/make_standin.py --out "$data_root" >/dev/null
    fi
    [ -n "$data_root" ] || die "--data_root is required (the SONYC-UST release; see README.md), \
or --standin true for the stand-in demo"
    [ -d "$data_root" ] || die "--data_root $data_root does not exist"
}

prepare_stage() {  # 1: manifests, labels.json (the output columns), data_info.json
    want 1 || return 0
    [ -n "$data_root" ] || [ "$standin" = false ] || data_root="$data_dir/standin"
    [ -n "$data_root" ] || die "--data_root is required (the SONYC-UST release; see README.md)"
    log "stage 1: preparing SONYC-UST manifests from $data_root"
    $python local/prepare.py --data_root "$data_root" --out_dir "$data" \
        --sample_rate "$sample_rate" --convert "$convert" --nj "$nj"
}

kd_stages() {  # 2-7, on the prepared data (its output count sizes every tagger)
    [ "$stage" -le 7 ] && [ "$stop_stage" -ge 2 ] || return 0
    [ -f "$data_info" ] || die "no prepared data in $data: run stage 1 first"
    n_outputs=$(json_field "$data_info" outputs)
    # shellcheck disable=SC2046  # word-split on purpose: the arguments of every run
    if [ -z "$datafree_methods" ]; then
        single_split_stages "$tdir" "$kd_methods" $(run_args)
        return 0
    fi
    # shellcheck disable=SC2046
    teacher_stage "$tdir" $(run_args)
    # shellcheck disable=SC2046
    cache_stage "$tdir" "$kd_methods" $(run_args)
    # shellcheck disable=SC2046
    student_stages "$tdir" "$kd_methods" $(run_args)
    # shellcheck disable=SC2046
    evaluation_stage "$tdir" "$kd_methods" $(run_args)
    # shellcheck disable=SC2046  # 6, and 7 of the data-free students
    datafree_stages "$tdir" "$pool_root" "$datafree_methods" $(run_args)
}

report_stage() {  # 8: RESULTS.md, the IUSP table and the frame-similarity figure
    want 8 || return 0
    log "stage 8: collecting results into $exp/RESULTS.md"
    $python -m kd_modules.results --matrix "$exp" --out "$exp/RESULTS_MATRIX.md" \
        --title "KD methods x audio tagging (SONYC-UST)"  # + .csv, .png (kd_modules.matrix)
    $python -m kd_modules.results "$exp" --out "$exp/RESULTS.md" \
        --title "Audio tagging: SONYC-UST ($(json_field "$data/.done" data_root), seeds $seeds)"
    $python local/report.py "$exp" --out "$exp/RESULTS.md" --figure "$exp/frame_similarity.png"
}

export_runs() {  # 9: the students (and the teacher with --export_teacher true), once each
    export_stage "$tdir" "$methods" --test_manifest "$data/test.json" \
        --labels_file "$data/labels.json" --calibration_manifest "$data/train.json"
}

# ----- the stages ----------------------------------------------------------------------------
check_stage     # 0
prepare_stage   # 1
kd_stages       # 2 teacher, 3 teacher cache, 4 students alone, 5 KD students, 6 data-free, 7
report_stage    # 8
export_runs     # 9
log "done"

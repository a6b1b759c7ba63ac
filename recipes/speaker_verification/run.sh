#!/usr/bin/env bash
# Speaker verification (VoxCeleb1, LibriSpeech): an ECAPA-TDNN teacher, smaller ECAPA students
# alone and with logit KD, embedding KD, MLKD, DKD and IML-KD (with its ablations); EER and
# minDCF with and without score normalisation. Stages follow the repository's convention:
#   0 check  1 prepare  2 teacher  3 teacher cache (IML-KD: the integrated-gradients maps)
#   4 students alone  5 KD students  6 (data-free KD: not part of this recipe)  7 verify  8 report
#   9 export (TorchScript, ONNX, int8 ONNX; opt-in: --stage 9 --stop_stage 9)
# Re-running the same command resumes: finished stages are skipped, training resumes from the
# last checkpoint. Examples:
#   ./run.sh --dataset voxceleb1 --data_root /data/VoxCeleb1 --seeds "1 2 3"
#   ./run.sh --dataset librispeech --data_root /data/LibriSpeech --teacher ecapa_tiny \
#       --students ecapa_tiny --device cpu
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)

stage=0                       # first stage to run (0-9)
stop_stage=8                  # last stage to run (0-9; 9, export, runs only when asked)
dataset=voxceleb1             # voxceleb1 | librispeech | folder (unlabelled audio: README.md)
data_root=""                  # the dataset's official layout (README.md)
standin=false                 # true | false: stage 0 builds a small VoxCeleb1-layout stand-in
standin_librispeech=""        # the stand-in's LibriSpeech folder ("": ../shared/data's subset)
standin_vctk=""               # the stand-in's VCTK folder ("": ../shared/data's subset)
trials=""                     # voxceleb1: the trial list (default <data_root>/veri_test2.txt)
test_data_root=""             # folder: the labelled test set (LibriSpeech, or VoxCeleb1 + --trials)
train_subsets=""              # librispeech: training speakers' subsets ("": train-clean-100)
test_subsets=""               # librispeech: test speakers' subsets ("": test-clean / -other present)
methods="kd embedding_cosine embedding_mse mlkd dkd imlkd imlkd_1s imlkd_raw"  # hparams/kd/<m>.yaml
students="ecapa_c512 ecapa_c256"  # student architectures (hparams/student/<arch>.yaml)
teacher=ecapa_c1024           # teacher architecture (hparams/teacher/<arch>.yaml)
# shellcheck source=../../tools/kd_options.sh
. "$root/tools/kd_options.sh"   # teacher_seed seeds ngpu device use_cache check_cache ...
min_duration_s=0.5            # seconds: stage 1 skips (and counts) shorter utterances
segment_s=3.0                 # seconds: the training segments stage 1 cuts
download=false                # true | false: stage 0 downloads LibriSpeech (OpenSLR) when no
                              # --data_root (VoxCeleb1 needs its request form: README.md)
update_readme=false           # true | false: stage 8 also writes README.md's results table

options="stage stop_stage dataset data_root standin standin_librispeech standin_vctk trials test_data_root
train_subsets test_subsets methods students teacher min_duration_s segment_s download update_readme
$kd_options"
help_message="Usage: $0 [options]   (README.md describes stages, options and outputs)
Stages: 0 check, 1 prepare, 2 teacher, 3 teacher cache, 4 students alone, 5 KD students,
        6 (not in this recipe), 7 verify, 8 report, 9 export"
# shellcheck source=../../tools/parse_options.sh
. "$root/tools/parse_options.sh"
# shellcheck source=../../tools/stage_helpers.sh
. "$root/tools/stage_helpers.sh"

# ----- options: checked before any stage, so that a typo never costs a training run ------------
check_stage_range 9
check_choice dataset voxceleb1 librispeech folder
check_choice standin true false
check_pattern min_duration_s '^[0-9]+([.][0-9]*)?$' 'a duration in seconds, e.g. 0.5'
check_pattern segment_s '^[0-9]+([.][0-9]*)?$' 'a duration in seconds, e.g. 3.0'
check_choice download true false
check_choice update_readme true false
check_kd_options
[ "$standin" = false ] || [ "$dataset" = voxceleb1 ] ||
    die "--standin true builds a VoxCeleb1-layout tree: use it with --dataset voxceleb1"
[ -z "$standin_librispeech$standin_vctk" ] || [ "$standin" = true ] ||
    die "--standin_librispeech / --standin_vctk are the sources of --standin true: give it too"

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
students_alone=true  # stages 4 and 7: --dataset folder has no labels to train a student alone on
[ "$dataset" != folder ] || students_alone=false
data="$data_dir/$dataset"
data_info="$data/data_info.json"  # stage 1's facts: the training speakers (kd_modules.data_info)
exp="$exp_dir/$dataset"
set_kd_flags

yaml() { echo "hparams/common.yaml hparams/$1 hparams/kd/$2.yaml"; }
teacher_dim=$(stage_status value "hparams/teacher/$teacher.yaml" embedding_dim)
teacher_widths=""  # the tapped layers' widths the feature KD methods map to (kd/fitnets.yaml...)
for key in hint_dim frames_dim pooled_dim; do
    width=$(stage_status value "hparams/teacher/$teacher.yaml" "$key")
    [ -z "$width" ] || teacher_widths+=" --teacher_$key $width"
done
run_args() {
    echo "--data_folder $data --dataset $dataset --n_speakers $n_speakers --exp_root $exp_dir" \
        "--device $device --sample_rate $sample_rate --teacher_embedding_dim $teacher_dim" \
        "$teacher_widths $extra_args"
}
tdir="$exp/teacher/$teacher/none/seed$teacher_seed"
student_folder() { echo "$exp/student/$1/$2/seed$3"; }

# ----- the recipe's own stages (0, 1 and 8); 2-7 are tools/stage_helpers.sh's -------------------

check_stage() {  # 0: the environment, the dataset root (or the stand-in, built here)
    want 0 || return 0
    log "stage 0: checking the environment and the dataset root"
    log_environment
    [ "$stop_stage" -ge 1 ] && [ ! -f "$data/.done" ] || return 0
    if [ -z "$data_root" ] && [ "$standin" = true ]; then
        data_root="$data_dir/standin"
        log "stage 0: building the stand-in tree $data_root (not VoxCeleb1: README.md)"
        local sources=()
        [ -z "$standin_librispeech" ] || sources+=(--librispeech "$standin_librispeech")
        [ -z "$standin_vctk" ] || sources+=(--vctk "$standin_vctk")
        $python local/make_standin.py --out "$data_root" "${sources[@]}" >/dev/null
    elif [ -z "$data_root" ] && [ "$download" = true ]; then
        # shellcheck disable=SC2086  # the subsets are word lists
        data_root=$(local/download.sh "$dataset" "$data_dir/downloads" $train_subsets \
            $test_subsets)
    fi
    [ -n "$data_root" ] || die "--data_root is required (the $dataset official layout; \
see README.md), or --standin true for the VoxCeleb1-layout stand-in, or --download true"
    [ -d "$data_root" ] || die "--data_root $data_root does not exist"
}

prepare_stage() {  # 1: manifests, trials, speakers, data_info.json
    want 1 || return 0
    [ -n "$data_root" ] || [ "$standin" = false ] || data_root="$data_dir/standin"
    [ -n "$data_root" ] || die "--data_root is required (the $dataset official layout)"
    log "stage 1: preparing $dataset manifests from $data_root"
    # only the options given: prepare.py refuses another dataset's options (and has defaults)
    local dataset_args=()
    [ -z "$trials" ] || dataset_args+=(--trials "$trials")
    [ -z "$test_data_root" ] || dataset_args+=(--test_data_root "$test_data_root")
    # shellcheck disable=SC2206  # the subsets are word lists
    [ -z "$train_subsets" ] || dataset_args+=(--train_subsets $train_subsets)
    # shellcheck disable=SC2206
    [ -z "$test_subsets" ] || dataset_args+=(--test_subsets $test_subsets)
    $python local/prepare.py --dataset "$dataset" --data_root "$data_root" --out_dir "$data" \
        --sample_rate "$sample_rate" --convert "$convert" --min_duration_s "$min_duration_s" \
        --segment_s "$segment_s" --nj "$nj" "${dataset_args[@]}"
}

kd_stages() {  # 2-7, on the prepared data (its speaker count names the classifier's classes)
    [ "$stage" -le 7 ] && [ "$stop_stage" -ge 2 ] || return 0
    [ -f "$data_info" ] || die "no prepared data in $data: run stage 1 first"
    n_speakers=$(json_field "$data_info" outputs)
    # shellcheck disable=SC2046  # word-split on purpose: the arguments of every run
    single_split_stages "$tdir" "$methods" $(run_args)
}

report_stage() {  # 8: RESULTS.md, the IML-KD comparison and the integrated-gradients figure
    want 8 || return 0
    log "stage 8: collecting results into $exp/RESULTS.md"
    $python -m kd_modules.results --matrix "$exp" --out "$exp/RESULTS_MATRIX.md" \
        --title "KD methods x speaker verification ($dataset)"  # + .csv, .png (kd_modules.matrix)
    local readme_flag=()
    [ "$update_readme" = true ] && readme_flag=(--readme README.md)
    $python -m kd_modules.results "$exp" --out "$exp/RESULTS.md" \
        --title "Speaker verification: $dataset ($(json_field "$data/.done" data_root), seeds $seeds)" \
        "${readme_flag[@]}"
    if [ -n "$teacher_source" ]; then  # IML-KD is refused with it; the figure needs stage 2's
        log "stage 8: no IML-KD comparison or integrated-gradients figure with --teacher_source"
    else
        $python local/report.py "$exp" --out "$exp/RESULTS.md" --data_folder "$data" \
            --figure "$exp/integrated_gradients.png" --teacher_folder "$tdir"
    fi
}

export_runs() {  # 9: the students (and the teacher with --export_teacher true), once each
    export_stage "$tdir" "$methods" --test_manifest "$data/test.json" \
        --trials_file "$data/trials.txt" --calibration_manifest "$data/train.json"
}

# ----- the stages ----------------------------------------------------------------------------
check_stage     # 0
prepare_stage   # 1
kd_stages       # 2 teacher, 3 teacher cache, 4 students alone, 5 KD students, (6), 7 verify
report_stage    # 8
export_runs     # 9
log "done"

#!/usr/bin/env bash
# Stage helpers shared by every recipe's run.sh: logging, stage selection, the launcher (one
# process or torchrun), option checks, the questions asked of Python before a process is launched
# (kd_modules.stages.status: a method's kind, a YAML value, is a run trained / evaluated) and the
# stages 2-5 and 7 every KD recipe shares. Source it after tools/parse_options.sh:
#     . "$root/tools/parse_options.sh"
#     . "$root/tools/stage_helpers.sh"
# Functions read the caller's option variables by name (stage, stop_stage, ngpu, device, python);
# an option check is given the option's variable name, which is also its --name. Every error is
# one line on stderr, "<script>: <what is wrong>", and exit status 1.
# shellcheck disable=SC2154  # stage, stop_stage, ngpu, device, python: the caller's options

# log MESSAGE...: a timestamped progress line on stdout, "YYYY-MM-DD HH:MM:SS [run.sh] MESSAGE".
log() { echo "$(date '+%F %T') [$(basename "$0")] $*"; }

# die MESSAGE...: the one-line error "<script>: MESSAGE" on stderr, then exit 1.
die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# want N: true when stage N lies within --stage .. --stop_stage.
want() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

# launch SCRIPT ARGS...: run SCRIPT with $python, or under torchrun (DDP, one process per device)
# when --ngpu > 1 or --nnodes > 1: gloo on CPU, NCCL otherwise. Each node's torchrun starts
# --ngpu processes; the global ranks are node_rank * ngpu + local rank.
launch() {
    local script=$1
    shift
    if [ "$ngpu" -gt 1 ] || [ "${nnodes:-1}" -gt 1 ]; then
        local backend=nccl
        [[ "$device" == cpu ]] && backend=gloo
        # shellcheck disable=SC2046  # the rendezvous options: a word list
        $python -m torch.distributed.run $(rendezvous_args) --nproc_per_node="$ngpu" "$script" \
            "$@" --distributed_backend "$backend"
    else
        $python "$script" "$@"
    fi
}

# rendezvous_args: how torchrun's nodes find each other: --standalone on one node without a
# rendezvous address; else --nnodes, and --rdzv_endpoint (c10d, node ranks given on joining) or
# --node_rank with --master_addr/--master_port (static: node 0 hosts the rendezvous).
rendezvous_args() {
    if [ -n "${rdzv_endpoint:-}" ]; then
        echo "--nnodes=$nnodes --rdzv_backend=c10d --rdzv_endpoint=$rdzv_endpoint"
    elif [ -n "${master_addr:-}" ]; then
        echo "--nnodes=$nnodes --node_rank=$node_rank --master_addr=$master_addr" \
            "--master_port=$master_port"
    else
        echo --standalone
    fi
}

# ----- option checks: run them right after parsing, before any stage --------------------------

# check_pattern NAME REGEX ALLOWED: --NAME's value must match the extended REGEX; ALLOWED says
# in words which values are (it ends the error message).
check_pattern() {
    local name=$1 regex=$2 allowed=$3
    [[ "${!name}" =~ $regex ]] || die "invalid --$name '${!name}' (allowed: $allowed)"
}

# check_choice NAME VALUE...: --NAME must be one of the VALUEs.
check_choice() {
    local name=$1 choice
    shift
    for choice in "$@"; do
        [ "${!name}" = "$choice" ] && return 0
    done
    die "invalid --$name '${!name}' (allowed: $(IFS='|' && echo "$*"))"
}

# check_int NAME MIN [MAX]: --NAME must be a whole number >= MIN (and <= MAX).
check_int() {
    local name=$1 min=$2 max=${3:-}
    local allowed="an integer >= $min"
    [ -n "$max" ] && allowed="an integer from $min to $max"
    check_pattern "$name" '^[0-9]+$' "$allowed"
    local value=$((10#${!name}))
    if [ "$value" -lt "$min" ] || { [ -n "$max" ] && [ "$value" -gt "$max" ]; }; then
        die "invalid --$name '${!name}' (allowed: $allowed)"
    fi
}

# check_ints NAME MIN_COUNT: --NAME must be a space-separated list of at least MIN_COUNT whole
# numbers (seeds, folds).
check_ints() {
    local name=$1 min_count=$2 words=()
    read -ra words <<<"${!name}"
    local allowed='integers separated by spaces, e.g. "1 2 3"'
    [ "$min_count" -gt 0 ] && allowed="$min_count or more $allowed"
    [ "${#words[@]}" -ge "$min_count" ] || die "invalid --$name '${!name}' (allowed: $allowed)"
    check_pattern "$name" '^[[:space:]]*([0-9]+[[:space:]]*)*$' "$allowed"
}

# check_stage_range LAST: --stage and --stop_stage must be stages 0..LAST, in that order.
check_stage_range() {
    check_int stage 0 "$1"
    check_int stop_stage 0 "$1"
    [ "$stage" -le "$stop_stage" ] ||
        die "invalid --stage $stage after --stop_stage $stop_stage (allowed: --stage <= --stop_stage)"
}

# check_yaml_names NAME DIR COUNT: every word of --NAME names a file DIR/<word>.yaml. COUNT is 1
# (exactly one name), + (one or more) or * (any number). Run it before stage 0, so that a typo
# stops the run before hours of training rather than when its stage is reached.
check_yaml_names() {
    local name=$1 dir=$2 count=$3 words=() word file available=()
    read -ra words <<<"${!name}"
    for file in "$dir"/*.yaml; do
        [ -f "$file" ] && available+=("$(basename "$file" .yaml)")
    done
    case "$count:${#words[@]}" in
        1:1 | +:[1-9]* | \*:*) ;;
        1:*) die "invalid --$name '${!name}': give exactly one name (available: ${available[*]})" ;;
        *) die "invalid --$name '${!name}': give at least one name (available: ${available[*]})" ;;
    esac
    for word in "${words[@]}"; do
        [ -f "$dir/$word.yaml" ] ||
            die "invalid --$name '$word': $dir/$word.yaml not found (available: ${available[*]})"
    done
}

# check_writable_dir NAME: the folder --NAME exists and is writable, or can be created. Nothing is
# left behind: the nearest existing ancestor is probed with a temporary folder, then removed.
check_writable_dir() {
    local name=$1 dir probe test_dir
    dir=${!name} probe=${!name}
    [ -n "$dir" ] || die "invalid --$name '' (allowed: a folder that can be created and written)"
    while [ ! -e "$probe" ] && [ ! -L "$probe" ]; do
        probe=$(dirname "$probe")
    done
    if [ -d "$probe" ] && test_dir=$(mktemp -d "$probe/.write_test.XXXXXX" 2>/dev/null); then
        rmdir "$test_dir"
        return 0
    fi
    die "--$name $dir cannot be created or written ($probe is not a writable folder)"
}

# check_nodes: the multi-node options (--nnodes, --node_rank, --master_addr, --master_port,
# --rdzv_endpoint). With --nnodes > 1 each node runs the same run.sh for stages 2-6 (those under
# torchrun; the others would write the shared folders from every node at once) and needs the
# rendezvous address.
check_nodes() {
    check_int nnodes 1
    check_int node_rank 0
    [ "$((10#$node_rank))" -lt "$((10#$nnodes))" ] ||
        die "invalid --node_rank $node_rank for --nnodes $nnodes (allowed: 0 to $((nnodes - 1)))"
    check_int master_port 1 65535
    check_pattern master_addr '^[^[:space:]:]*$' 'a host name or IPv4 address, e.g. node01'
    check_pattern rdzv_endpoint '^([^[:space:]:]+:[0-9]+)?$' 'HOST:PORT, e.g. node01:29400'
    [ -z "$master_addr" ] || [ -z "$rdzv_endpoint" ] ||
        die "give --master_addr (with --master_port) or --rdzv_endpoint, not both"
    [ "$nnodes" -eq 1 ] && return 0
    [ -n "$master_addr$rdzv_endpoint" ] ||
        die "--nnodes $nnodes needs --master_addr HOST (node 0) or --rdzv_endpoint HOST:PORT"
    [ "$stage" -ge 2 ] && [ "$stop_stage" -le 6 ] ||
        die "--nnodes $nnodes runs stages 2-6 only (got --stage $stage --stop_stage" \
            "$stop_stage): run stages 0-1 and 7-9 on one node (README.md, Scaling out)"
}

# ----- what run.sh asks Python before launching a process (kd_modules.stages.status) -----------

STAGE_RECORD=stage_record.json  # in a run folder: the command that trained it, and its inputs

# stage_status QUESTION ARGS...: python -m kd_modules.stages.status (standard library and PyYAML
# only, so an answer takes a fraction of a second, not the seconds of importing torch).
stage_status() { $python -m kd_modules.stages.status "$@"; }

# methods_of KIND: the words of --methods whose hparams/kd YAML is of KIND (kd: real-data KD,
# stages 3 and 5; datafree: it names a synthesiser, stage 6).
methods_of() {
    # shellcheck disable=SC2086  # methods: a word list
    stage_status methods "$1" hparams/kd $methods
}

# stage_done STAMP SCRIPT ARGS...: true when STAMP records "SCRIPT ARGS" as done with every input
# unchanged (the YAML, the data of $data_info when set, the teacher, the outputs).
stage_done() {
    local stamp=$1 data=()
    shift
    [ -z "${data_info:-}" ] || data=(--data "$data_info")
    stage_status done "$stamp" "${data[@]}" -- "$@" >/dev/null
}

# record_stage STAMP OPTION... -- SCRIPT ARGS...: record "SCRIPT ARGS", which has just succeeded,
# as done (OPTIONs: --trained RUN_DIR, whose train_info.json must say finished; --output FILE).
# In a multi-node run node 0 alone writes it: the nodes share the run folders.
record_stage() {
    local stamp=$1 data=()
    shift
    [ "${node_rank:-0}" -eq 0 ] || return 0
    [ -z "${data_info:-}" ] || data=(--data "$data_info")
    stage_status record "$stamp" "${data[@]}" "$@" >/dev/null
}

# train_once STAGE RUN_DIR ARGS...: "launch train.py ARGS" for the run folder RUN_DIR, unless
# its stage record says this very command trained it and nothing it read has changed since
# (then one line says so and no process starts: train.py would find nothing to do).
train_once() {
    local number=$1 dir=$2
    shift 2
    if stage_done "$dir/$STAGE_RECORD" train.py "$@"; then
        log "stage $number: $dir already trained by this command"
        return 0
    fi
    launch train.py "$@"
    record_stage "$dir/$STAGE_RECORD" --trained "$dir" -- train.py "$@"
}

# ----- stage 7 ----------------------------------------------------------------------------------

# evaluate_once RUN_DIR SCRIPT ARGS...: test RUN_DIR's best-validation checkpoint with
# "SCRIPT ARGS --output_folder RUN_DIR --test_only", unless it is evaluated: its results.json is
# newer than its train_info.json and every output file it names (scores, predictions) is there
# with the checksum recorded when it was written (stage_status evaluated, which says why not;
# kd_modules.outputs). A run that never trained is an error.
evaluate_once() {
    local dir=$1 script=$2 reason
    shift 2
    if reason=$(stage_status evaluated "$dir"); then
        log "stage 7: $dir already evaluated"
        return 0
    fi
    [ -f "$dir/train_info.json" ] || die "$dir is not trained (run its training stage first)"
    if [ -f "$dir/results.json" ]; then
        log "stage 7: evaluating $dir again: $reason"
    else
        log "stage 7: evaluating $dir"
    fi
    $python "$script" "$@" --output_folder "$dir" --test_only
}

# json_field FILE KEY: print FILE's top-level KEY (a list as space-separated words).
json_field() {
    $python -c 'import json, sys
value = json.load(open(sys.argv[1]))[sys.argv[2]]
print(" ".join(map(str, value)) if isinstance(value, list) else value)' "$1" "$2"
}

# ----- what every KD recipe's run.sh shares -----------------------------------------------------

# check_kd_options: the options every KD recipe has (methods, students, teacher, seeds, launcher,
# device, cache, conversion, output folders), checked before any stage.
check_kd_options() {
    check_yaml_names methods hparams/kd '*'
    check_yaml_names students hparams/student +
    check_yaml_names teacher hparams/teacher 1
    check_int teacher_seed 0
    check_ints seeds 1
    check_int ngpu 1
    check_nodes
    check_pattern device '^(auto|cpu|cuda|cuda:[0-9]+)$' 'auto|cpu|cuda|cuda:N'
    check_choice use_cache true false
    check_int check_cache 0
    check_choice allow_unfinished_teacher true false
    check_choice trust_teacher_code true false
    check_choice tensorboard true false
    check_choice quantize true false
    check_choice export_teacher true false
    check_int sample_rate 1
    check_choice convert auto sox soundfile none
    check_int nj 0
    if [ "$stage" -le 1 ]; then check_writable_dir data_dir; fi  # stages 0 and 1 write it
    check_writable_dir exp_dir
}

# set_kd_flags: resolve --device auto (cuda when torch sees a GPU), and set cache_flag (True /
# False, for --use_teacher_cache) and unfinished_args (the train.py flag of
# --allow_unfinished_teacher true, else empty) for the stages to pass on; --tensorboard true adds
# the YAML key's override (--tensorboard True) to every run's extra_args.
# shellcheck disable=SC2034  # cache_flag and unfinished_args are the caller's
set_kd_flags() {
    if [ "$device" = auto ]; then
        device=$($python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
    fi
    cache_flag=$([ "$use_cache" = true ] && echo True || echo False)
    unfinished_args=()
    [ "$allow_unfinished_teacher" = true ] && unfinished_args=(--allow_unfinished_teacher True)
    source_args=()  # --teacher_source: the pretrained teacher, tapped as hparams/teacher/$teacher
    [ -z "$teacher_source" ] || source_args=(--teacher_source "$teacher_source"
        --trust_teacher_code "$([ "$trust_teacher_code" = true ] && echo True || echo False)"
        --teacher_source_yaml "hparams/teacher/$teacher.yaml")
    [ "$tensorboard" = false ] || extra_args="${extra_args:+$extra_args }--tensorboard True"
    return 0
}

# log_environment: stage 0's line with the torch / SpeechBrain versions and CUDA availability.
log_environment() {
    $python -c "import kd_modules, speechbrain, torch; print('torch', torch.__version__, \
'speechbrain', speechbrain.__version__, 'cuda', torch.cuda.is_available())"
}

# ----- stages 2-5 and 7, the same in every KD recipe --------------------------------------------
# They read the caller's options (teacher, teacher_seed, teacher_args, kd_args, students, seeds,
# use_cache, check_cache, cache_flag, unfinished_args), an optional log_scope (e.g. ", fold 3", added to
# every log line) and two functions the recipe defines:
#   yaml ARCH_FILE METHOD             the YAML files of a run, e.g. yaml student/x.yaml kd
#   student_folder ARCH METHOD SEED   a student's run folder
# Each takes the teacher's run folder, the KD methods (one word list) and the arguments every
# run gets (data folder, device, overrides...). Stages outside --stage..--stop_stage are skipped.

# teacher_stage TDIR ARGS...: stage 2, the teacher (with --teacher_args).
teacher_stage() {
    local tdir=$1
    shift
    want 2 || return 0
    if [ -n "${teacher_source:-}" ]; then
        log "stage 2: skipped: the teacher is --teacher_source $teacher_source"
        return 0
    fi
    log "stage 2: teacher $teacher${log_scope:-} -> $tdir"
    # shellcheck disable=SC2046,SC2086  # word lists on purpose
    train_once 2 "$tdir" $(yaml "teacher/$teacher.yaml" none) "$@" --role teacher \
        --seed "$teacher_seed" --output_folder "$tdir" --skip_test True $teacher_args
}

# cache_command METHOD TDIR ARGS...: set cache_args to stage 3's cache_teacher.py command for
# METHOD (with the first student's composition: the cache key does not depend on the student).
cache_command() {
    local method=$1 tdir=$2
    shift 2
    # shellcheck disable=SC2046,SC2086  # word lists on purpose
    cache_args=(cache_teacher.py $(yaml "student/${students%% *}.yaml" "$method") "$@"
        --output_folder "$tdir" --teacher_folder "$tdir" --check_cache "$check_cache"
        "${unfinished_args[@]}" "${source_args[@]}" $kd_args)
}

# cache_stage TDIR METHODS ARGS...: stage 3, the teacher cache of each method: one process per
# distinct cache (python -m kd_modules.stages.cache_plan groups the methods that share one, e.g.
# logit and embedding KD), none for a method whose record in TDIR/cache_records/ says this very
# command built its cache and nothing it read has changed since.
cache_stage() {
    local tdir=$1 methods=$2 method plan group groups=() folder printed todo=()
    shift 2
    { want 3 && [ "$use_cache" = true ]; } || return 0
    for method in $methods; do
        cache_command "$method" "$tdir" "$@"
        if stage_done "$tdir/cache_records/$method.json" "${cache_args[@]}"; then
            log "stage 3: teacher cache for $method${log_scope:-} already built by this command"
        else
            todo+=("$method")
        fi
    done
    [ "${#todo[@]}" -gt 0 ] || return 0
    cache_command "{method}" "$tdir" "$@"
    plan=$($python -m kd_modules.stages.cache_plan "${todo[@]}" -- "${cache_args[@]:1}")
    mapfile -t groups <<<"$plan"  # one line per cache: the methods it serves
    printed=$(mktemp)
    for group in "${groups[@]}"; do
        log "stage 3: teacher cache for $group${log_scope:-}"
        cache_command "${group%% *}" "$tdir" "$@"
        launch "${cache_args[@]}" >"$printed"  # a file, not a pipe: no wait on a torchrun rank
        folder=$(tail -n 1 "$printed")  # cache_teacher.py prints the folder it built
        log "stage 3: teacher cache for $group${log_scope:-} -> $folder"
        for method in $group; do
            cache_command "$method" "$tdir" "$@"
            record_stage "$tdir/cache_records/$method.json" --output "$folder/meta.json" -- \
                "${cache_args[@]}"
        done
    done
    rm -f "$printed"
}

# student_stages TDIR METHODS ARGS...: stage 4 (each student alone) and stage 5 (each student
# with each method), per architecture and seed. A recipe sets students_alone=false for data
# without labels (a student alone has nothing to learn there): stages 4 and 7 leave it out.
student_stages() {
    local tdir=$1 methods=$2 arch seed method sdir
    shift 2
    for arch in $students; do
        for seed in $seeds; do
            if want 4 && [ "${students_alone:-true}" = true ]; then
                sdir=$(student_folder "$arch" none "$seed")
                log "stage 4: student $arch alone${log_scope:-}, seed $seed -> $sdir"
                # shellcheck disable=SC2046
                train_once 4 "$sdir" $(yaml "student/$arch.yaml" none) "$@" --seed "$seed" \
                    --output_folder "$sdir" --skip_test True
            fi
            want 5 || continue
            for method in $methods; do
                sdir=$(student_folder "$arch" "$method" "$seed")
                log "stage 5: student $arch with $method${log_scope:-}, seed $seed -> $sdir"
                # shellcheck disable=SC2046
                train_once 5 "$sdir" $(yaml "student/$arch.yaml" "$method") "$@" --seed "$seed" \
                    --output_folder "$sdir" --teacher_folder "$tdir" \
                    --use_teacher_cache "$cache_flag" --skip_test True "${unfinished_args[@]}" \
                    "${source_args[@]}" $kd_args
            done
        done
    done
}

# evaluation_stage TDIR METHODS ARGS...: stage 7, train.py --test_only on the teacher, each
# student alone and each KD student, once each (evaluate_once).
evaluation_stage() {
    local tdir=$1 methods=$2 arch seed method
    shift 2
    want 7 || return 0
    # shellcheck disable=SC2046,SC2086
    [ -n "${teacher_source:-}" ] ||  # a --teacher_source teacher was not trained here
        evaluate_once "$tdir" train.py $(yaml "teacher/$teacher.yaml" none) "$@" --role teacher \
            --seed "$teacher_seed" $teacher_args
    local alone=none
    [ "${students_alone:-true}" = true ] || alone=""
    for arch in $students; do
        for seed in $seeds; do
            for method in $alone $methods; do
                local teacher_flag=()
                # shellcheck disable=SC2206  # kd_args: a word list on purpose
                [ "$method" = none ] || teacher_flag=(--teacher_folder "$tdir" $kd_args)
                # shellcheck disable=SC2046
                evaluate_once "$(student_folder "$arch" "$method" "$seed")" train.py \
                    $(yaml "student/$arch.yaml" "$method") "$@" --seed "$seed" \
                    "${teacher_flag[@]}"
            done
        done
    done
}

# single_split_stages TDIR METHODS ARGS...: stages 2-7 of a recipe with one data split and no
# data-free stage: the teacher, its caches, the students alone and with each method, then stage
# 7. Call it only once the prepared data is known (stages 2-7 wanted), since ARGS name it.
single_split_stages() {
    local tdir=$1 methods=$2
    shift 2
    teacher_stage "$tdir" "$@"
    cache_stage "$tdir" "$methods" "$@"
    student_stages "$tdir" "$methods" "$@"
    if want 6; then
        log "stage 6: data-free distillation is not part of this recipe: skipped"
    fi
    evaluation_stage "$tdir" "$methods" "$@"
}

# ----- stage 6: data-free KD (synthesize.py) -----------------------------------------------------

synthesiser() { stage_status value "hparams/kd/$1.yaml" synthesis; }  # of a data-free METHOD
datafree_yaml() {  # ARCH METHOD: the composition of a data-free run
    echo "hparams/common.yaml hparams/student/$1.yaml hparams/synthesis/$(synthesiser "$2").yaml" \
        "hparams/kd/$2.yaml"
}

# datafree_stages TDIR POOL_ROOT METHODS ARGS...: stage 6 and the data-free runs' stage 7 of a
# recipe with one data split: per student arch, seed and data-free method, synthesize.py builds
# (or reuses) the pool POOL_ROOT/<synthesiser>/seed<s> from the teacher TDIR and distils the
# student on it, then evaluates it once. Options of stage 6 alone: $synthesis_args.
datafree_stages() {
    local tdir=$1 pool_root=$2 methods=$3 arch seed method sdir pool
    shift 3
    if want 6 && [ -z "$methods" ]; then
        log "stage 6: no data-free method in --methods (e.g. frami, deepinversion, cmi): skipped"
    fi
    for arch in $students; do
        for seed in $seeds; do
            for method in $methods; do
                sdir=$(student_folder "$arch" "$method" "$seed")
                pool="$pool_root/$(synthesiser "$method")/seed$seed"
                if want 6; then
                    log "stage 6: $method, seed $seed: pool $pool -> $sdir"
                    # shellcheck disable=SC2046,SC2086
                    launch synthesize.py $(datafree_yaml "$arch" "$method") "$@" --seed "$seed" \
                        --output_folder "$sdir" --teacher_folder "$tdir" --pool_folder "$pool" \
                        --skip_test True "${unfinished_args[@]}" ${synthesis_args:-}
                fi
                if want 7; then
                    # shellcheck disable=SC2046,SC2086
                    evaluate_once "$sdir" synthesize.py $(datafree_yaml "$arch" "$method") "$@" \
                        --seed "$seed" --teacher_folder "$tdir" --pool_folder "$pool" \
                        ${synthesis_args:-}
                fi
            done
        done
    done
}

# ----- stage 9 ----------------------------------------------------------------------------------

# export_once RUN_DIR ARGS...: stage 9 for one evaluated run folder, "python -m
# kd_modules.stages.export RUN_DIR --quantize $quantize ARGS" (TorchScript, ONNX and with
# --quantize true int8 ONNX files, their test metric and latency in results.json's export block),
# unless it is exported: the block names files that are all there with their checksums (stage_status
# exported, which says why not). A run that is not evaluated is refused by the export itself.
export_once() {
    local dir=$1 reason
    shift
    if reason=$(stage_status exported "$dir" --quantize "$quantize"); then
        log "stage 9: $dir already exported"
        return 0
    fi
    log "stage 9: exporting $dir ($reason)"
    $python -m kd_modules.stages.export "$dir" --quantize "$quantize" "$@"
}

# export_stage TDIR METHODS ARGS...: stage 9 on each student alone and each student of METHODS
# (and on the teacher TDIR with --export_teacher true), once each (export_once); ARGS name the
# test manifest, the calibration clips and the labels or trials (kd_modules.stages.export).
export_stage() {
    local tdir=$1 methods=$2 arch seed method
    shift 2
    want 9 || return 0
    [ "$export_teacher" = false ] || [ -n "${teacher_source:-}" ] || export_once "$tdir" "$@"
    for arch in $students; do
        for seed in $seeds; do
            for method in none $methods; do
                export_once "$(student_folder "$arch" "$method" "$seed")" "$@"
            done
        done
    done
}

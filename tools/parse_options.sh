#!/usr/bin/env bash
# Parse --name value / --name=value options into the caller's existing shell variables.
# Source it after declaring the defaults:  . tools/parse_options.sh "$@"
# An option whose variable was not declared is an error (no silent typos); --help prints the
# caller's $help_message, then each option of $options (a space-separated list) with its current
# value and its meaning: the trailing comment of the caller's "name=default  # meaning" line (or of
# a file in $option_files that declared the default).

_caller_script=${BASH_SOURCE[1]:-$0}
# a caller that cd'd into its own folder before sourcing this is found again by its file name
[ -f "$_caller_script" ] || _caller_script=$(basename "$_caller_script")

# _option_meaning NAME: the trailing "# comment" of the "NAME=default  # comment" line in the
# caller or in a file it sourced its shared defaults from ($option_files, e.g. tools/kd_options.sh).
_option_meaning() {
    local line
    # shellcheck disable=SC2086  # option_files is a list of paths
    line=$(grep -h -m1 -E "^[[:space:]]*$1=" "$_caller_script" ${option_files:-} 2>/dev/null \
        | head -n 1) || true
    [ -n "$line" ] || return 0
    if [[ "$line" == *[[:space:]]#* ]]; then
        line=${line#*[[:space:]]#}
        echo "${line#"${line%%[![:space:]]*}"}"
    fi
}

_print_help() {
    local name value meaning width=0
    echo "${help_message:-}"
    [ -n "${options:-}" ] || return 0
    echo "Options (current value, then meaning and allowed values):"
    for name in $options; do
        [ "${#name}" -gt "$width" ] && width=${#name}
    done
    for name in $options; do
        value=${!name}
        [[ -z "$value" || "$value" == *[[:space:]]* ]] && value="\"$value\""
        meaning=$(_option_meaning "$name")
        if [ -n "$meaning" ]; then
            printf '  --%-*s %-16s %s\n' "$width" "$name" "$value" "$meaning"
        else
            printf '  --%-*s %s\n' "$width" "$name" "$value"
        fi
    done
}

while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h)
            _print_help
            exit 0
            ;;
        --*=*)
            _name="${1%%=*}"; _name="${_name#--}"; _value="${1#*=}"; shift
            ;;
        --*)
            _name="${1#--}"
            if [ $# -lt 2 ]; then echo "$0: option --$_name needs a value" >&2; exit 1; fi
            _value="$2"; shift 2
            ;;
        *)
            echo "$0: unexpected argument '$1' (options are --name value; see --help)" >&2
            exit 1
            ;;
    esac
    _name="${_name//-/_}"
    # shellcheck disable=SC2086,SC2116  # echo joins the lines of $options
    if [[ " $(echo ${options:-}) " != *" $_name "* ]]; then
        echo "$0: unknown option --$_name (see --help)" >&2
        exit 1
    fi
    printf -v "$_name" '%s' "$_value"
done
unset _name _value _caller_script

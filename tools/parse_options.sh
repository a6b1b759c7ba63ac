#!/usr/bin/env bash
# Parse --name value / --name=value options into the caller's existing shell variables.
# Source it after declaring the defaults:  . tools/parse_options.sh "$@"
# An option whose variable was not declared is an error (no silent typos); --help prints the
# caller's $help_message and the current values of its options ($options, a space-separated list).

_print_help() {
    echo "${help_message:-}"
    if [ -n "${options:-}" ]; then
        echo "Options (current values):"
        for _name in $options; do
            printf '  --%-16s %s\n' "$_name" "${!_name}"
        done
    fi
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
    # shellcheck disable=SC2086
    if [[ " $(echo ${options:-}) " != *" $_name "* ]]; then
        echo "$0: unknown option --$_name (see --help)" >&2
        exit 1
    fi
    printf -v "$_name" '%s' "$_value"
done
unset _name _value

#!/usr/bin/env bash
# Download LibriSpeech subsets from OpenSLR into DEST (used by run.sh --download true).
#   local/download.sh librispeech DEST SUBSET...
# Prints the folder to pass as --data_root (DEST/LibriSpeech). VoxCeleb1 cannot be downloaded
# without its request form: the script says where to get it. Fails with a clear message offline.
set -euo pipefail
dataset=${1:?usage: $0 librispeech|voxceleb1 DEST [SUBSET...]}
dest=${2:?usage: $0 DATASET DEST [SUBSET...]}
shift 2
case "$dataset" in
    librispeech)
        for subset in "${@:-train-clean-100 test-clean}"; do
            for word in $subset; do
                "$(dirname "$0")/../../../tools/download.sh" \
                    "https://www.openslr.org/resources/12/$word.tar.gz" "$dest" \
                    "LibriSpeech/$word" >/dev/null
            done
        done
        echo "$dest/LibriSpeech" ;;
    voxceleb1)
        echo "$0: VoxCeleb1 is distributed after a request form" \
             "(https://www.robots.ox.ac.uk/~vgg/data/voxceleb/): download wav/, vox1_meta.csv" \
             "and veri_test2.txt, then pass the folder as --data_root." >&2
        exit 1 ;;
    *) echo "$0: unknown dataset '$dataset'" >&2; exit 1 ;;
esac

#!/usr/bin/env bash
# Download and unpack a dataset's official release into DEST (used by run.sh --download true).
#   local/download.sh esc50|urbansound8k|audiomnist|fsdd DEST
# Prints the folder to pass as --data_root. Fails with a clear message when offline.
set -euo pipefail
dataset=${1:?usage: $0 esc50|urbansound8k|audiomnist|fsdd DEST}
dest=${2:?usage: $0 DATASET DEST}
case "$dataset" in
    esc50) url=https://github.com/karolpiczak/ESC-50/archive/master.zip; root=ESC-50-master ;;
    urbansound8k) url=https://zenodo.org/record/1203745/files/UrbanSound8K.tar.gz; root=UrbanSound8K ;;
    audiomnist) url=https://github.com/soerenab/AudioMNIST/archive/master.zip; root=AudioMNIST-master ;;
    fsdd) url=https://github.com/Jakobovski/free-spoken-digit-dataset/archive/master.zip
          root=free-spoken-digit-dataset-master ;;
    *) echo "$0: unknown dataset '$dataset'" >&2; exit 1 ;;
esac
"$(dirname "$0")/../../../tools/download.sh" "$url" "$dest" "$root"

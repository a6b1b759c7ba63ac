#!/usr/bin/env bash
# Fetch and unpack one archive of an official release (the recipes' local/download.sh use it).
#   tools/download.sh URL DEST ROOT
# Unpacks URL (.zip or .tar.gz) into DEST unless DEST/ROOT exists already, then prints DEST/ROOT.
# Fails with one clear line on stderr (exit 1) when the download fails, e.g. offline.
set -euo pipefail
url=${1:?usage: $0 URL DEST ROOT}
dest=${2:?usage: $0 URL DEST ROOT}
root=${3:?usage: $0 URL DEST ROOT}
mkdir -p "$dest"
archive="$dest/$(basename "$url")"
if [ ! -e "$dest/$root" ]; then
    echo "Downloading $url" >&2
    if ! curl -fsSL --retry 2 --connect-timeout 20 -o "$archive.part" "$url"; then
        rm -f "$archive.part"
        echo "$(basename "$0"): could not download $url (no network access?). Download it by" \
             "hand, unpack it and pass the folder as --data_root (see the recipe's README.md)." >&2
        exit 1
    fi
    mv "$archive.part" "$archive"
    case "$archive" in
        *.zip) unzip -q "$archive" -d "$dest" ;;
        *.tar.gz) tar -xzf "$archive" -C "$dest" ;;
    esac
    rm -f "$archive"
fi
echo "$dest/$root"

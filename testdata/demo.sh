#!/usr/bin/env bash
# `make demo`: convert the sample image to zstd:chunked and inspect the result.
#   DEMO_OUT=DIR bash testdata/demo.sh   to choose where the output goes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
if [ -x "$root/.venv/bin/zconv" ]; then
  zconv="$root/.venv/bin/zconv"
else
  zconv="python3 -m converter.cli"
  cd "$root"
fi
out="${DEMO_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/zconv-demo.XXXXXX")}"
rm -rf "$out/sample-zstd" "$out/sample-zstd.tar"

echo "== the sample image (gzip layers)"
$zconv inspect "oci:$here/sample:v1"
echo
echo "== zconv convert oci:testdata/sample:v1 oci:$out/sample-zstd:v1"
$zconv convert "oci:$here/sample:v1" "oci:$out/sample-zstd:v1"
echo
echo "== zconv inspect oci:$out/sample-zstd:v1"
$zconv inspect "oci:$out/sample-zstd:v1"
echo
echo "== the same as an oci-archive with both encodings (--dual), JSON report"
$zconv convert --dual --json "oci:$here/sample:v1" "oci-archive:$out/sample-zstd.tar:v1"
echo
echo "== converting again gives the same digests (reproducible)"
$zconv convert -q "oci:$here/sample:v1" "oci:$out/again:v1"
cmp "$out/sample-zstd/index.json" "$out/again/index.json" && echo "index.json identical: $(cat "$out/again/index.json" | head -c 200)..."
rm -rf "$out/again"
echo
echo "output kept in $out"

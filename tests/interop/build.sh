#!/usr/bin/env bash
# Builds tests/interop/zconv-interop (the interop suite's Go helper) when its
# sources changed. The first build downloads the Go modules from the module
# proxy (go.sum pins them). Prints the binary's path on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$here/zconv-interop"
stamp="$here/.zconv-interop.sources"
tags="containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper"

# The Go toolchain of this machine kind lives in /usr/local/go (Debian's golang-go is too
# old for go.podman.io, which needs go >= 1.26).
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null; then
  echo "build.sh: the go toolchain is not on PATH (needed to build the interop helper)" >&2
  exit 1
fi
# Several test runs may build at once: one builds, the others wait and reuse it.
exec 9>"$here/.build.lock"
flock 9
# What the binary depends on: our sources, the module pins, the toolchain, the tags.
sources="$(cd "$here" && { cat go.mod go.sum main.go build.sh; go version; echo "$tags"; } | sha256sum | cut -d' ' -f1)"
if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sources" ]; then
  echo "$bin"
  exit 0
fi
start=$(date +%s)
echo "build.sh: building $bin" >&2
(
  cd "$here"
  CGO_ENABLED=0 go build -mod=readonly -trimpath -buildvcs=false -tags "$tags" -o "$bin.tmp" .
)
mv -f "$bin.tmp" "$bin"
echo "$sources" > "$stamp"
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"

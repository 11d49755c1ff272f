#!/usr/bin/env bash
# Release build: a static, stripped binary with its version (VERSION, or the
# second argument), git revision, branch, build user and date stamped in,
# as promu stamps Prometheus' own binaries. The Debian package and the
# container images are built from it.
#
#   bash deploy/build.sh OUT [VERSION]
set -euo pipefail
out=$(realpath -m "$1")
cd "$(dirname "$0")/.."
version=${2:-$(cat VERSION)}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
branch=$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
pkg=github.com/prometheus/common/version
CGO_ENABLED=0 go build -trimpath -buildvcs=false -o "$out" -ldflags "-s -w
  -X $pkg.Version=$version -X $pkg.Revision=$revision -X $pkg.Branch=$branch
  -X $pkg.BuildUser=$(id -un)@$(hostname) -X $pkg.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)" .

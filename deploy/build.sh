#!/usr/bin/env bash
# Release build: a static, stripped binary with its version (VERSION, or the
# second argument), git revision, branch, build user and date stamped in,
# as promu stamps Prometheus' own binaries. The Debian package and the
# container images are built from it. GOARCH picks the architecture; with
# SOURCE_DATE_EPOCH set the build date is that moment and the build user is
# BUILD_USER (default "release"), so that two builds are byte-identical.
#
#   bash deploy/build.sh OUT [VERSION]
set -euo pipefail
# The release toolchain, taken from the Go module proxy like any module: it
# has none of the standard library's vulnerabilities that go.mod's Go has
# (docs/development.md). GOTOOLCHAIN given wins.
export GOTOOLCHAIN=${GOTOOLCHAIN:-go1.27.3}
out=$(realpath -m "$1")
cd "$(dirname "$0")/.."
version=${2:-$(cat VERSION)}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
branch=$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
pkg=github.com/prometheus/common/version
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  user=${BUILD_USER:-release}@consul-conn-exporter
  date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d-%H:%M:%S)
else
  user=$(id -un)@$(hostname)
  date=$(date -u +%Y%m%d-%H:%M:%S)
fi
CGO_ENABLED=0 go build -trimpath -buildvcs=false -o "$out" -ldflags "-s -w -buildid=
  -X $pkg.Version=$version -X $pkg.Revision=$revision -X $pkg.Branch=$branch
  -X $pkg.BuildUser=$user -X $pkg.BuildDate=$date" .

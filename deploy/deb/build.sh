#!/usr/bin/env bash
# Builds OUTDIR/consul-conn-exporter_VERSION_ARCH.deb (GOARCH, default
# amd64) with nfpm, a build tool run at a pinned version and never linked
# into the product: the release binary (deploy/build.sh, or BINARY when a
# release has built it already), the systemd units,
# /etc/default/consul-conn-exporter (a conffile), the maintainer scripts,
# the manual page and the bash and zsh completions (deploy/cli-files.sh),
# and a copyright file naming every Go module linked in (cmd/notices).
#
#   bash deploy/deb/build.sh OUTDIR [VERSION]
set -euo pipefail
outdir=$(realpath -m "$1")
cd "$(dirname "$0")/../.."
export VERSION=${2:-$(cat VERSION)}
export GOARCH=${GOARCH:-amd64}
# nfpm, pinned as a tool of the tools module (tools/go.mod, apart so that
# its many dependencies do not move the exporter's): built once, then run
# from the cache with no network (go mod download -modfile=tools/go.mod).
nfpm=$(GOARCH= go tool -modfile=tools/go.mod -n nfpm)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
if [ -n "${BINARY:-}" ]; then
  cp "$BINARY" "$stage/consul_conn_exporter"
else
  bash deploy/build.sh "$stage/consul_conn_exporter" "$VERSION"
fi
cp -r deploy/systemd "$stage/systemd"
cp deploy/deb/nfpm.yaml deploy/deb/default deploy/deb/lintian-overrides deploy/deb/postinst deploy/deb/postrm "$stage/"
GOARCH= go run ./cmd/notices -debian "$stage/consul_conn_exporter" > "$stage/copyright"
sed -i "s/^arch: .*/arch: $GOARCH/" "$stage/nfpm.yaml"
printf '%s (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- %s  %s\n' \
  consul-conn-exporter "$VERSION" "$VERSION" \
  "consul-conn-exporter developers <consul-conn-exporter@users.noreply.github.com>" \
  "$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
  | gzip -9n > "$stage/changelog.gz"
bash deploy/cli-files.sh "$stage" "$VERSION"
mkdir -p "$outdir"
deb="$outdir/consul-conn-exporter_${VERSION}_${GOARCH}.deb"
(cd "$stage" && "$nfpm" package --config nfpm.yaml --packager deb --target "$deb" >&2)
echo "$deb"

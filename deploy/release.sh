#!/usr/bin/env bash
# A release, the Prometheus way, for linux/amd64 and linux/arm64 into OUTDIR:
# static stripped binaries with the version stamped, in
# consul_conn_exporter-VERSION.linux-ARCH.tar.gz (a directory of that name
# with the binary, LICENSE and NOTICES: every Go module linked in, with its
# licence, from cmd/notices, which fails on a licence it does not know; and
# the manual page and the bash and zsh completions, deploy/cli-files.sh), the
# Debian package of each, a CycloneDX SBOM beside each of the four
# (ARTIFACT.cdx.json), and sha256sums.txt over all of them. Building twice
# from one commit with one SOURCE_DATE_EPOCH (default: the commit's time)
# gives byte-identical tarballs and binaries.
#
#   bash deploy/release.sh OUTDIR [VERSION]
set -euo pipefail
outdir=$(realpath -m "$1")
cd "$(dirname "$0")/.."
version=${2:-$(cat VERSION)}
# A semantic version, one line: it names every file made.
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  printf 'release.sh: the version must be a semantic version like 1.2.3 (VERSION or the second argument), not %q\n' "$version" >&2
  exit 2
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$outdir"
for arch in amd64 arm64; do
  name=consul_conn_exporter-$version.linux-$arch
  mkdir "$stage/$name"
  GOARCH=$arch bash deploy/build.sh "$stage/$name/consul_conn_exporter" "$version"
  cp LICENSE "$stage/$name/LICENSE"
  bash deploy/cli-files.sh "$stage/$name" "$version"
  go run ./cmd/notices "$stage/$name/consul_conn_exporter" > "$stage/$name/NOTICES"
  touch -d "@$SOURCE_DATE_EPOCH" "$stage/$name" "$stage/$name"/*
  chmod 0755 "$stage/$name" "$stage/$name/consul_conn_exporter"
  chmod 0644 "$stage/$name/LICENSE" "$stage/$name/NOTICES" "$stage/$name/consul_conn_exporter.1.gz" \
    "$stage/$name/consul_conn_exporter.bash" "$stage/$name/_consul_conn_exporter"
  tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "$stage" -cf - "$name" | gzip -9n > "$outdir/$name.tar.gz"
  GOARCH=$arch BINARY="$stage/$name/consul_conn_exporter" bash deploy/deb/build.sh "$outdir" "$version" >/dev/null
  # A CycloneDX SBOM beside each artifact: the modules linked into the
  # binary it carries, as its build information says; no serial number and
  # no time, so that a second build gives the same bytes.
  for artifact in "$name.tar.gz" "consul-conn-exporter_${version}_$arch.deb"; do
    go tool -modfile=tools/go.mod cyclonedx-gomod bin -json -noserial -notimestamp -version "v$version" \
      -output "$outdir/$artifact.cdx.json" "$stage/$name/consul_conn_exporter"
  done
done
# Only what this run made: OUTDIR may hold other files.
(cd "$outdir" && sha256sum -- consul_conn_exporter-"$version".linux-*.tar.gz consul-conn-exporter_"$version"_*.deb \
  consul_conn_exporter-"$version".linux-*.tar.gz.cdx.json consul-conn-exporter_"$version"_*.deb.cdx.json > sha256sums.txt)
ls "$outdir"

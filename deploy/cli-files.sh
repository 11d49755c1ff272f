#!/usr/bin/env bash
# The command line's files, generated from its flags (kingpin writes them):
# the manual page and the bash and zsh completions, into OUTDIR:
#   consul_conn_exporter.1.gz, consul_conn_exporter.bash, _consul_conn_exporter
# The release puts them in the tarball, deb/build.sh in the package.
#
#   bash deploy/cli-files.sh OUTDIR VERSION
set -euo pipefail
outdir=$(realpath -m "$1")
version=$2
cd "$(dirname "$0")/.."
mkdir -p "$outdir"
bin=$(mktemp)
trap 'rm -f "$bin"' EXIT
# Built for this machine, whatever the release's GOARCH: it only prints.
GOARCH= CGO_ENABLED=0 go build -o "$bin" .
# kingpin's header line would hold the whole multi-line version text, so the
# page gets a plain one.
"$bin" --help-man \
  | awk -v v="$version" '
      /^\.SH "NAME"/ { print ".TH CONSUL_CONN_EXPORTER 1 \"\" \"consul_conn_exporter " v "\""; on = 1; print; getline
                       print "consul_conn_exporter \\- count Consul'"'"'s open connections per client against its limits"; next }
      on
      END { print ".SH \"LICENSE\""; print "Apache-2.0. The licences of the Go modules linked in: /usr/share/doc/consul-conn-exporter/copyright, or NOTICES." }' \
  | gzip -9n > "$outdir/consul_conn_exporter.1.gz"
"$bin" --completion-script-bash > "$outdir/consul_conn_exporter.bash"
"$bin" --completion-script-zsh > "$outdir/_consul_conn_exporter"

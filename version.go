package main

import (
	_ "embed"
	"runtime/debug"
	"strings"

	"github.com/prometheus/common/version"
)

// versionFile is VERSION: the version of `go run .` and `go build`, which
// nothing else stamps.
//
//go:embed VERSION
var versionFile string

// license is the exporter's, for --version.
const license = "Apache-2.0 (LICENSE; the licences of the modules linked in: NOTICES in the release)"

// fillVersion fills in what the linker did not stamp (deploy/build.sh
// stamps everything, as promu does) from Go's build information: the
// module version under `go install ...@vX`, or the version Go derives from
// the checkout's tags and commit. prometheus/common takes the revision
// from the same place (vcs.revision, with "-modified").
func fillVersion() {
	info, ok := debug.ReadBuildInfo()
	if version.Version == "" {
		version.Version = strings.TrimSpace(versionFile)
		if ok && info.Main.Version != "" && info.Main.Version != "(devel)" && !strings.Contains(info.Main.Version, "-0.") {
			version.Version = strings.TrimPrefix(info.Main.Version, "v") // go install ...@vX
		}
	}
	if version.Branch == "" {
		version.Branch = "unknown"
	}
	if version.BuildDate == "" && ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.time" {
				version.BuildDate = "commit " + s.Value
			}
		}
	}
}

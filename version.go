package main

import (
	"runtime/debug"
	"strings"

	"github.com/prometheus/common/version"
)

// fillVersion fills in what the linker did not stamp (deploy/build.sh
// stamps everything, as promu does) from Go's build information: the
// module version under `go install ...@vX`, or the version Go derives from
// the checkout's tags and commit. prometheus/common takes the revision
// from the same place (vcs.revision, with "-modified").
func fillVersion() {
	info, ok := debug.ReadBuildInfo()
	if version.Version == "" {
		version.Version = "unknown"
		if ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
			version.Version = strings.TrimPrefix(info.Main.Version, "v")
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

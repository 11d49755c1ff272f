// Package programs lets a test ask for a program it runs for real: the test
// skips, saying how to install it, where the program is missing, except in
// CI (CI=true), where a missing program is a failure.
package programs

import (
	"os"
	"os/exec"
	"testing"
)

// Need returns the path of program, or ends the test: install says how to
// get it ("apt-get install busybox").
func Need(t testing.TB, program, install string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err != nil {
		missing(t, program+" is not installed: "+install)
	}
	return path
}

// NeedRoot ends the test unless it runs as root; why says what for.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root to "+why+": run the tests as root (CI does)")
	}
}

func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Package captures finds the captures in testdata/captures: real output of
// ss and netstat (NAME.txt), made by cmd/capture-fixtures, each beside the
// counts its scenario was built to give (NAME.expected.json, an Expected).
package captures

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Dir is the captures' directory, found from this file's: any test finds
// it, from any package.
var Dir = func() string {
	_, here, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(here), "..", "..", "..", "testdata", "captures")
}()

// Path is the capture named name (NAME.txt).
func Path(name string) string { return filepath.Join(Dir, name) }

// All are the paths of every capture.
func All() ([]string, error) { return filepath.Glob(filepath.Join(Dir, "*.txt")) }

// Expected is what a capture must count to for its ports and states.
type Expected struct {
	Command []string `json:"command"`
	Ports   []uint16 `json:"ports"`
	States  []string `json:"states"`
	// ImpliedState is the state of every row when the table has no State
	// column (a single `state X` filter).
	ImpliedState string `json:"implied_state,omitempty"`
	// Error, when set, is part of the error the parser must give instead of
	// counts: the table cannot be counted from.
	Error        string                    `json:"error,omitempty"`
	Total        map[string]int            `json:"total"`
	ByState      map[string]map[string]int `json:"by_state"`
	PerClient    map[string]int            `json:"per_client"`
	MaxPerClient int                       `json:"max_per_client"`
	// ByUse is how many of the counted connections are in each use, over
	// the ports (unknown where the table has no tcp_info).
	ByUse map[string]int `json:"by_use,omitempty"`
}

// ReadExpected reads the expected counts beside the capture at path
// (NAME.txt beside NAME.expected.json).
func ReadExpected(capture string) (Expected, error) {
	var want Expected
	text, err := os.ReadFile(strings.TrimSuffix(capture, ".txt") + ".expected.json")
	if err != nil {
		return want, err
	}
	return want, json.Unmarshal(text, &want)
}

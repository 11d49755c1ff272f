// Command heldgen writes held.h, the held word's layout for the C, from
// package kernel's: go generate runs it in internal/kernel.
package main

import (
	"fmt"
	"os"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
)

func main() {
	if err := os.WriteFile("held.h", []byte(kernel.HeldHeader()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "heldgen:", err)
		os.Exit(1)
	}
}

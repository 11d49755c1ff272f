// Command measure runs a command and prints what it cost, from the
// kernel's own accounting (rusage), in microseconds: wall, user and system
// CPU time, and its peak RSS in KiB, as "wall user sys rss". The command's
// standard output goes to stdout; its standard error is dropped.
//
//	measure COMMAND [ARG...]
package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: measure COMMAND [ARG...]")
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stdout = os.Stdout
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		fmt.Fprintf(os.Stderr, "measure: %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	usage := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	fmt.Fprintf(os.Stderr, "%d %d %d %d\n", wall.Microseconds(),
		cmd.ProcessState.UserTime().Microseconds(), cmd.ProcessState.SystemTime().Microseconds(), usage.Maxrss)
}

//go:build cgo

package capabilities

// withCgo: libcap's psx reaches every thread by listing /proc/PID/task.
const withCgo = true

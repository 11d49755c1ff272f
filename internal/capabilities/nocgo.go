//go:build !cgo

package capabilities

// withCgo: libcap's psx reaches every thread through the Go runtime.
const withCgo = false

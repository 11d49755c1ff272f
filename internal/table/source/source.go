// Package source is where the sockets come from: ss, netstat, a --command,
// or the kernel's socket table read directly (sockdiag). Each yields the
// same socket records; what reads them never asks which.
package source

import (
	"context"
	"fmt"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Source reads the socket table.
type Source interface {
	// Read calls add with each socket of the table. A source that has to
	// start over calls reset first. An error means the table cannot be
	// trusted, and nothing added counts.
	Read(ctx context.Context, add func(socket.Socket), reset func()) error
	// String names the source for messages.
	String() string
}

// Want is what a collection needs from the table.
type Want struct {
	// Ports and States select the server-side sockets that count.
	Ports  []uint16
	States []socket.State
	// ClientPorts asks for the client ends of local connections to these
	// ports too, and what names the program holding each socket: its
	// inode (ss -e, netstat -e, the built-in reader), or its name (-p in a
	// --command).
	ClientPorts []uint16
}

// processes is whether the programs holding the sockets are wanted.
func (w Want) processes() bool { return len(w.ClientPorts) > 0 }

// unavailable is a source that cannot read: every read fails with err.
type unavailable struct{ err error }

func noTool(err error) (Source, error) {
	err = fmt.Errorf("%w: %w", ErrNoTool, err)
	return unavailable{err}, err
}

func (u unavailable) Read(context.Context, func(socket.Socket), func()) error { return u.err }
func (u unavailable) String() string                                          { return "no source" }

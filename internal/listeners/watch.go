package listeners

import (
	"context"
	"slices"
	"time"
)

// Watch reads the listeners on the watched ports, and on the agent's
// address's, and judges whose are the agent's.
type Watch struct {
	read    func(ctx context.Context) ([]Listener, error)
	addr    *Address
	user    *uint32
	watched []uint16
}

// NewWatch watches the listeners on the watched ports and at addr's port,
// read from the kernel's socket table within timeout each; user is the
// agent's where given (--consul.user), nil to judge it by addr.
func NewWatch(addr *Address, user *uint32, watched []uint16, timeout time.Duration) *Watch {
	ports := slices.Clone(watched)
	if !slices.Contains(ports, addr.Port()) {
		ports = append(ports, addr.Port()) // where the agent's own listener is
	}
	return NewWatchOf(func(ctx context.Context) ([]Listener, error) { return Read(ctx, ports, timeout) }, addr, user, watched)
}

// NewWatchOf is NewWatch with the listeners read by read.
func NewWatchOf(read func(ctx context.Context) ([]Listener, error), addr *Address, user *uint32, watched []uint16) *Watch {
	return &Watch{read: read, addr: addr, user: user, watched: watched}
}

// Address is the agent's address, as given or Consul's default.
func (w *Watch) Address() *Address { return w.addr }

// Judge reads the listeners and judges whose they are, the agent's at
// where, and keeps the address whose listener is the agent's for the
// exporter's own reads of it (Address.Agent).
func (w *Watch) Judge(ctx context.Context, where Where) (*Agent, error) {
	ls, err := w.read(ctx)
	if err != nil {
		return nil, err
	}
	agent := Judge(ls, w.watched, where, w.user)
	w.addr.Judged(agent.At)
	return &agent, nil
}

// Now looks the agent's address up, reads the listeners and judges them,
// saying nothing of what goes wrong (the collections say it): nil where
// they cannot be read.
func (w *Watch) Now(ctx context.Context) *Agent {
	where, _ := w.addr.Resolve(ctx)
	agent, _ := w.Judge(ctx, where)
	return agent
}

package delivery

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// On a stop the server may be done before the loop looks: Run takes its
// one result whichever way it comes, and returns. Taking it twice (once in
// the loop, once to wait for the server) hung a stopping exporter forever,
// now and then (e2e's signal tests stop the real one).
func TestRunReturnsOnStopWithAServer(t *testing.T) {
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	// Done as soon as it is asked to be: both of Run's ways of seeing the
	// stop are ready at once, in either order.
	serve := func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	}
	for range 1000 {
		done := make(chan error, 1)
		go func() { done <- Run(stopped, time.Hour, nil, nil, serve, slog.New(slog.DiscardHandler)) }()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after the stop")
		}
	}
}

func TestRunReturnsTheErrorOfAServerThatStoppedByItself(t *testing.T) {
	failed := errors.New("listen tcp: address already in use")
	serve := func(context.Context) error { return failed }
	err := Run(context.Background(), time.Hour, nil, nil, serve, slog.New(slog.DiscardHandler))
	assert.ErrorIs(t, err, failed)
}

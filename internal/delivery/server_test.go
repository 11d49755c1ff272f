package delivery

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// pipe is one end of a connection, and whether that end was closed.
func pipe(t *testing.T) (net.Conn, func() bool) {
	t.Helper()
	ours, theirs := net.Pipe()
	t.Cleanup(func() { ours.Close(); theirs.Close() })
	return ours, func() bool {
		theirs.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		_, err := theirs.Read(make([]byte, 1))
		return err != nil && !isTimeout(err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestPastTheCapTheConnectionWaitingLongestIsClosed(t *testing.T) {
	c := connectionCap{max: 2, since: map[net.Conn]time.Time{}}
	busy, busyClosed := pipe(t)
	idle, idleClosed := pipe(t)
	fresh, freshClosed := pipe(t)
	c.track(busy, http.StateNew)
	c.track(busy, http.StateActive) // a scrape under way is never cut
	c.track(idle, http.StateNew)
	c.track(idle, http.StateIdle)
	c.track(fresh, http.StateNew)
	assert.True(t, idleClosed(), "the idle one makes room")
	assert.False(t, busyClosed())
	assert.False(t, freshClosed(), "a new scrape gets in")
	c.track(idle, http.StateClosed)

	another, anotherClosed := pipe(t)
	c.track(fresh, http.StateActive)
	c.track(another, http.StateNew)
	assert.True(t, anotherClosed(), "every other one is busy: the newcomer waits its turn")
	assert.False(t, busyClosed())
	assert.False(t, freshClosed())
}

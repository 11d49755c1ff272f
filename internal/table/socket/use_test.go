package socket

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A use is read from what the kernel counts; where the last data each way
// came in one tick of its clock, it is unknown, never guessed.
func TestAUseIsReadFromTheTrafficOrUnknown(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state State
		t     Traffic
		want  Use
	}{
		{"the client shut its side", StateCloseWait, Traffic{BytesReceived: 90, BytesSent: 40, SinceReceived: 9, SinceSent: 3}, UseHalfClosed},
		{"nothing received", StateEstablished, Traffic{SinceReceived: 5000, SinceSent: 5000}, UseSilent},
		{"a first request, not answered", StateEstablished, Traffic{BytesReceived: 90, SinceReceived: 4, SinceSent: 4}, UseWaiting},
		{"a request after the last answer", StateEstablished, Traffic{BytesReceived: 180, BytesSent: 40, SinceReceived: 4, SinceSent: 8}, UseWaiting},
		{"answered last", StateEstablished, Traffic{BytesReceived: 90, BytesSent: 40, SinceReceived: 8, SinceSent: 4}, UseIdle},
		{"both in one tick", StateEstablished, Traffic{BytesReceived: 180, BytesSent: 40, SinceReceived: 8, SinceSent: 8}, UseUnknown},
	} {
		assert.Equal(t, tc.want, UseOf(tc.state, tc.t), tc.name)
	}
}

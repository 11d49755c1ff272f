package capabilities

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"kernel.org/pub/linux/libs/security/libcap/cap"
)

func TestNamesAreReadAsSystemdAndCapshWriteThem(t *testing.T) {
	values, err := Parse([]string{"CAP_SYS_ADMIN", "net_admin", "Cap_Sys_Ptrace"})
	require.NoError(t, err)
	assert.Equal(t, []cap.Value{cap.SYS_ADMIN, cap.NET_ADMIN, cap.SYS_PTRACE}, values)
	assert.Equal(t, "CAP_SYS_ADMIN,CAP_NET_ADMIN,CAP_SYS_PTRACE", Names(values))
	assert.Equal(t, "none", Names(nil))

	_, err = Parse([]string{"CAP_SYS_ADMN"})
	assert.EqualError(t, err, `"CAP_SYS_ADMN" is not a capability (e.g. CAP_SYS_ADMIN)`)
}

package wholenumber

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestOnlyWholeNumbers(t *testing.T) {
	var n int
	v := Of(&n)
	assert.NoError(t, v.Set("10"))
	assert.Equal(t, 10, n)
	for _, bad := range []string{"1e3", "1.5", "", "ten", "0x10"} {
		assert.Error(t, v.Set(bad), bad)
	}
	assert.Equal(t, "10", v.String())
}

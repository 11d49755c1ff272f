package kernelbtf

import (
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

func TestOffsetsLookIntoAnonymousUnions(t *testing.T) {
	programs.NeedBTF(t)
	spec, err := btf.LoadKernelSpec()
	require.NoError(t, err)
	// struct bpf_iter__task_file { union { struct bpf_iter_meta *meta; };
	// union { struct task_struct *task; }; u32 fd; union { struct file *file; }; }
	for member, want := range map[string]int16{"meta": 0, "task": 8, "fd": 16, "file": 24} {
		offset, err := Offset(spec, "bpf_iter__task_file", member)
		require.NoError(t, err, member)
		assert.Equal(t, want, offset, member)
	}
	_, err = Offset(spec, "bpf_iter__task_file", "absent")
	assert.EqualError(t, err, "no absent in this kernel's struct bpf_iter__task_file")
	_, err = Offset(spec, "no_such_struct", "x")
	assert.ErrorContains(t, err, "no struct no_such_struct in this kernel's BTF")
}

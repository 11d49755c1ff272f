// Package kernelbtf says where the running kernel keeps a struct's fields,
// from its BTF: the kernel programs, written in Go with cilium/ebpf's asm,
// follow the kernel they run on instead of a layout fixed at build time.
package kernelbtf

import (
	"fmt"

	"github.com/cilium/ebpf/btf"
)

// Offset is the byte offset of member in the struct typeName, looking into
// its anonymous structs and unions.
func Offset(spec *btf.Spec, typeName, member string) (int16, error) {
	var s *btf.Struct
	if err := spec.TypeByName(typeName, &s); err != nil {
		return 0, fmt.Errorf("no struct %s in this kernel's BTF: %w", typeName, err)
	}
	offset, ok := offsetOf(s, member, 0)
	if !ok {
		return 0, fmt.Errorf("no %s in this kernel's struct %s", member, typeName)
	}
	return int16(offset), nil
}

func offsetOf(t btf.Type, name string, base btf.Bits) (uint32, bool) {
	var members []btf.Member
	switch c := t.(type) {
	case *btf.Struct:
		members = c.Members
	case *btf.Union:
		members = c.Members
	default:
		return 0, false
	}
	for _, m := range members {
		switch {
		case m.Name == name:
			return (base + m.Offset).Bytes(), true
		case m.Name == "":
			if offset, ok := offsetOf(btf.UnderlyingType(m.Type), name, base+m.Offset); ok {
				return offset, true
			}
		}
	}
	return 0, false
}

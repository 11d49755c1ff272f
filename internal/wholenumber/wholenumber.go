// Package wholenumber reads a flag as a whole number: kingpin's own int
// flags go through ParseFloat, and take "1e3" as 1000 and "1.5" as 1.
package wholenumber

import (
	"fmt"
	"strconv"
)

// Value is a kingpin.Value (flag.Value) that sets *p.
type Value struct{ p *int }

// Of is the value that sets p.
func Of(p *int) *Value { return &Value{p} }

// Set reads s as a whole number in decimal.
func (v *Value) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%q is not a whole number", s)
	}
	*v.p = n
	return nil
}

func (v *Value) String() string { return strconv.Itoa(*v.p) }

//go:build tools

// Package tools pins the Consul agent that the integration tests run, so
// that CI builds the same one every time: go build -o BIN github.com/hashicorp/consul
package tools

import _ "github.com/hashicorp/consul"

package source

import (
	"context"
	"fmt"
	"strings"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Text is a table printed earlier (a capture in fixtures/), read as a
// command's output is read, without running anything.
type Text struct {
	name, text string
	parser     parser.Parser
}

// NewText reads text, named name in messages; implied and processes are as
// for NewCommand.
func NewText(name, text string, implied socket.State, processes bool) *Text {
	return &Text{name: name, text: text, parser: parser.Parser{ImpliedState: implied, Processes: processes}}
}

// String is the name.
func (t *Text) String() string { return t.name }

// Read adds the sockets of the text.
func (t *Text) Read(_ context.Context, add func(socket.Socket), _ func()) error {
	table := newTable(t.parser, add, true) // the captures' kernel counts bytes sent
	lines := strings.Split(strings.TrimSuffix(t.text, "\n"), "\n")
	if t.text == "" {
		lines = nil
	}
	for _, line := range lines {
		table.read(line)
	}
	if err := table.check(runner.Output{Lines: len(lines)}); err != nil {
		return fmt.Errorf("%s %w", t.name, err)
	}
	return nil
}

// Package textfile writes metrics into node_exporter's textfile collector
// directory.
package textfile

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
)

// FileName is the file written in the directory.
const FileName = "consul_open_http_connections.prom"

// Write replaces dir/FileName with what g gathers, atomically: the metrics
// go to a temporary file in dir (whose name does not end in .prom, so
// node_exporter never reads it), which is then renamed over the old file. A
// failure leaves the old file as it was and no temporary file behind.
func Write(dir string, g prometheus.Gatherer) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("textfile directory %s: %w (create it or pass --textfile.directory)", dir, unwrapPath(err))
	}
	if !info.IsDir() {
		return fmt.Errorf("textfile directory %s is not a directory", dir)
	}
	path := filepath.Join(dir, FileName)
	if err := prometheus.WriteToTextfile(path, g); err != nil {
		return fmt.Errorf("write %s: %w", path, unwrapPath(err))
	}
	return nil
}

// unwrapPath drops the path from an *os.PathError, which the message names
// already.
func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

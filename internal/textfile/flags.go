package textfile

import "github.com/alecthomas/kingpin/v2"

// Flags name the textfile directory.
type Flags struct {
	Dir string
	// Set is a directory given on the command line: then the file is
	// written beside any other output, not only when there is none.
	Set bool
}

// AddFlags declares the textfile's flag on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	flag := app.Flag("textfile.directory", "node_exporter's --collector.textfile.directory, where "+FileName+" is written (the output when no other is named).").
		Default("/tmp/node-exporter")
	flag.IsSetByUser(&f.Set)
	flag.StringVar(&f.Dir)
	return f
}

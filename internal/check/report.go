package check

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
)

// Print writes the verdict of res to w in the format asked for (colour
// only where w is a terminal a person reads) and returns its status, the
// exit code; a report that cannot be written is Unknown.
func (f *Flags) Print(w io.Writer, res collector.Result) Status {
	report := f.Evaluate(res)
	var err error
	if f.JSON() {
		err = report.WriteJSON(w)
	} else {
		err = report.WriteText(w, isTerminal(w))
	}
	if err != nil {
		return Unknown
	}
	return report.Status
}

// isTerminal is a terminal (colour welcome), not a pipe, a file or Consul,
// and NO_COLOR is not set.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}

// WriteJSON writes the report as one JSON object.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes a table per limiter group, then the verdict as the last
// line; colour marks the status only where color is set (a terminal).
func (r Report) WriteText(w io.Writer, color bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, g := range r.Groups {
		limit := "limit not known"
		if g.NoLimit {
			limit = "no per-client limit"
		}
		if g.Limit > 0 {
			limit = fmt.Sprintf("limit %d per client: %s", g.Limit, g.LimitName)
		}
		fmt.Fprintf(tw, "%s connections (%s)\n", g.Title, limit)
		fmt.Fprintf(tw, "  PORT\tOPEN\t%s\n", strings.ToUpper(strings.Join(r.states, "\t")))
		for _, p := range g.Ports {
			fmt.Fprintf(tw, "  %d\t%d", p.Port, p.Open)
			for _, state := range r.states {
				fmt.Fprintf(tw, "\t%d", p.ByState[state])
			}
			fmt.Fprintln(tw)
		}
		if err := tw.Flush(); err != nil { // the clients' columns are their own
			return err
		}
		if len(g.Clients) > 0 {
			fmt.Fprintf(tw, "  CLIENT\tCONNECTIONS\tSHARE\tPROGRAMS\n")
		}
		for _, c := range g.Clients {
			share := "-"
			if g.Limit > 0 {
				share = percent(c.Share)
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\n", c.Client, c.Connections, share, processList(c.Processes))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, note := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", note)
	}
	status := r.Status.String()
	if color {
		status = [...]string{"\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[35m"}[r.Status] + status + "\x1b[0m"
	}
	_, err := fmt.Fprintf(w, "%s: %s\n", status, r.Reason)
	return err
}

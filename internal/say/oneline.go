package say

// Text from elsewhere (a command's output, a server's answer, a parser's
// error) goes into the one line of a log message or an error: a page
// quoted whole would flood the log.

import "strings"

// Clip is the first line of text, at most most bytes of it, ending in
// "..." where anything was cut.
func Clip(text string, most int) string {
	line, _, cut := strings.Cut(text, "\n")
	if len(line) > most {
		line, cut = line[:most], true
	}
	if cut {
		line += "..."
	}
	return line
}

// Fold is all of text on one line: its lines and runs of blanks joined by
// single spaces.
func Fold(text string) string {
	return strings.Join(strings.Fields(text), " ")
}

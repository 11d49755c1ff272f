// Package runner runs the command that prints the socket table and streams
// its output line by line, so memory does not grow with the table.
//
// It never uses a shell: a command is an argv. It falls back to a plainer
// form of a command, once for the life of the process, when an old version
// of the tool rejects an option.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-cmd/cmd"
	"github.com/google/shlex"
)

// Runner runs one command, or the first of its forms that the installed tool
// accepts.
type Runner struct {
	forms   [][]string // most wanted first
	current atomic.Int32
	timeout time.Duration
}

// Output is what a successful run printed besides the table.
type Output struct {
	// Lines is how many lines the command printed on standard output.
	Lines int
	// Stderr is the first lines the command printed on standard error.
	Stderr []string
}

// maxStderrLines bounds what is kept of standard error for messages.
const maxStderrLines = 5

// New runs the first of forms, most wanted first, that the installed tool
// accepts: a form an old tool rejects an option of is dropped for good.
func New(timeout time.Duration, forms ...[]string) (*Runner, error) {
	if len(forms) == 0 {
		return nil, errors.New("empty command")
	}
	for _, argv := range forms {
		if len(argv) == 0 || argv[0] == "" {
			return nil, errors.New("empty command")
		}
	}
	return &Runner{forms: forms, timeout: timeout}, nil
}

// Parse splits a command line into words the way a shell would (quotes keep
// words together) and runs them without a shell: ';', '|' and '$(...)' are
// plain characters.
func Parse(commandLine string, timeout time.Duration) (*Runner, error) {
	argv, err := shlex.Split(commandLine)
	if err != nil {
		return nil, fmt.Errorf("command %q: %w", commandLine, err)
	}
	if len(argv) == 0 {
		return nil, errors.New("empty command")
	}
	return New(timeout, argv)
}

// Argv is the command the next run will start.
func (r *Runner) Argv() []string { return r.forms[r.current.Load()] }

// String is the command line, for messages.
func (r *Runner) String() string { return quote(r.Argv()) }

// Run starts the command and calls onLine with each line of its standard
// output, in order, as it is printed. It fails when the command cannot
// start, exits non-zero, is killed, or runs past the timeout (then its whole
// process group is killed).
func (r *Runner) Run(ctx context.Context, onLine func(string)) (Output, error) {
	for {
		form := r.current.Load()
		out, err := run(ctx, r.forms[form], r.timeout, onLine)
		if rejectedOption(out, err) && int(form)+1 < len(r.forms) {
			r.current.CompareAndSwap(form, form+1)
			continue
		}
		return out, err
	}
}

// rejectedOption is an old tool refusing a newer flag: it says so on
// standard error, prints nothing else and exits non-zero.
func rejectedOption(out Output, err error) bool {
	if err == nil || out.Lines > 0 {
		return false
	}
	var exit *ExitError
	if !errors.As(err, &exit) {
		return false
	}
	text := strings.Join(out.Stderr, "\n")
	return strings.Contains(text, "invalid option") || strings.Contains(text, "unrecognized option")
}

// ExitError is a command that ran and exited non-zero.
type ExitError struct {
	Command string
	Code    int
	Stderr  []string
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("%s exited with status %d", e.Command, e.Code)
	if len(e.Stderr) > 0 {
		msg += ": " + strings.Join(e.Stderr, "; ")
	}
	return msg
}

func run(ctx context.Context, argv []string, timeout time.Duration, onLine func(string)) (out Output, err error) {
	name := quote(argv)
	var overflow overflowWatch
	c := cmd.NewCmdOptions(cmd.Options{
		Streaming: true,
		BeforeExec: []func(*exec.Cmd){func(c *exec.Cmd) {
			// A child that forks off a grandchild holding stdout open must
			// not keep Wait, and so the collection, waiting forever.
			c.WaitDelay = time.Second
			// The output is parsed, not read by a person: no translated
			// state names ("VERBUNDEN") or number formats.
			c.Env = append(c.Environ(), "LC_ALL=C", "LANGUAGE=")
			overflow.Writer = c.Stdout
			c.Stdout = &overflow
		}},
	}, argv[0], argv[1:]...)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	statusCh := c.Start()
	// Whenever the command is given up on, whatever it left running (a
	// background child holding its output, say) goes with it: in the
	// long-running mode each collection would otherwise leave one more.
	defer func() {
		if err != nil {
			killGroup(c)
		}
	}()

	var (
		timedOut   atomic.Bool
		stderrRead = make(chan struct{})
	)
	stopTimer := context.AfterFunc(ctx, func() {
		timedOut.Store(true)
		_ = c.Stop() // SIGTERM first, as go-cmd does; the deferred kill follows
		killGroup(c)
	})
	defer stopTimer()
	// go-cmd blocks the command on a full channel, so both channels are
	// read to the end, even after a kill; stdout with a plain receive per
	// line, the cheapest way through 100,000 lines.
	go func() {
		defer close(stderrRead)
		for line := range c.Stderr {
			if line = strings.TrimSpace(line); line != "" && len(out.Stderr) < maxStderrLines {
				out.Stderr = append(out.Stderr, line)
			}
		}
	}()
	for line := range c.Stdout {
		out.Lines++
		if !timedOut.Load() {
			// go-cmd strips the CR of "\r\n" only where its index in a
			// write happens to match: strip it from every line here.
			onLine(strings.TrimSuffix(line, "\r"))
		}
	}
	<-stderrRead
	status := <-statusCh
	switch {
	case status.PID == 0 && status.Error != nil:
		return out, fmt.Errorf("cannot run %s: %w", name, status.Error)
	case timedOut.Load() && ctx.Err() == context.DeadlineExceeded:
		return out, fmt.Errorf("%s did not finish within %s (--command.timeout): killed", name, timeout)
	case timedOut.Load():
		return out, fmt.Errorf("%s: %w", name, ctx.Err())
	case overflow.tooLong.Load():
		return out, fmt.Errorf("%s printed a line longer than %d bytes: not a socket table; killed", name, cmd.DEFAULT_LINE_BUFFER_SIZE)
	case errors.Is(status.Error, exec.ErrWaitDelay):
		return out, fmt.Errorf("%s exited but left a process holding its output open: killed", name)
	case status.Error != nil:
		return out, fmt.Errorf("%s did not complete: %w", name, status.Error)
	case status.Exit != 0:
		return out, &ExitError{Command: name, Code: status.Exit, Stderr: out.Stderr}
	}
	return out, nil
}

// overflowWatch notes when go-cmd gives up on a line too long for its
// buffer; the command then only dies of a broken pipe, which says nothing.
type overflowWatch struct {
	io.Writer
	tooLong atomic.Bool
}

func (w *overflowWatch) Write(p []byte) (int, error) {
	n, err := w.Writer.Write(p)
	if errors.As(err, new(cmd.ErrLineBufferOverflow)) {
		w.tooLong.Store(true)
	}
	return n, err
}

// killGroup ends the command's whole process group with SIGKILL: a hung
// child may ignore go-cmd's SIGTERM, and ss and netstat have nothing to
// clean up.
func killGroup(c *cmd.Cmd) {
	if pid := c.Status().PID; pid > 0 {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

func quote(argv []string) string {
	words := make([]string, len(argv))
	for i, w := range argv {
		if w == "" || strings.ContainsAny(w, " \t'\"()*;$|&<>") {
			w = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		}
		words[i] = w
	}
	return strings.Join(words, " ")
}

// Package textfile writes metrics into node_exporter's textfile collector
// directory, which may sit in a world-writable place such as /tmp while the
// exporter runs as root: no other local user may steer where it writes or
// what node_exporter reads.
package textfile

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// FileName is the file written in the directory.
const FileName = "consul_open_http_connections.prom"

// Write replaces dir/FileName with what g gathers, atomically: the metrics go
// to a temporary file in dir (whose name does not end in .prom, so
// node_exporter never reads it), which is synced and renamed over the old
// file. A failure leaves the old file as it was and no temporary file behind.
//
// dir is created (0755) when missing. It is refused when another user could
// change what is in it (see openDir). Every step after the check works on
// the directory opened once, so nothing can be swapped in between.
func Write(dir string, g prometheus.Gatherer) error {
	families, err := g.Gather()
	if err != nil {
		return err
	}
	root, err := openDir(dir)
	if err != nil {
		return err
	}
	defer root.Close()

	path := filepath.Join(dir, FileName)
	tmp := tmpPrefix + rand.Text() + tmpSuffix
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, unwrapPath(err))
	}
	err = writeFile(f, families)
	if err == nil {
		err = root.Rename(tmp, FileName)
	}
	if err != nil {
		_ = root.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, unwrapPath(err))
	}
	// The rename is durable once the directory is synced too.
	if d, err := root.Open("."); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// A temporary file is named .consul_open_http_connections.prom.RANDOM.tmp.
const (
	tmpPrefix = "." + FileName + "."
	tmpSuffix = ".tmp"
)

// RemoveLeftovers removes from dir the temporary files that an exporter
// stopped mid-write (killed, or the host lost power) left behind, after
// the same checks as Write. It says how many it removed.
func RemoveLeftovers(dir string) (int, error) {
	root, err := openDir(dir)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	d, err := root.Open(".")
	if err != nil {
		return 0, unwrapPath(err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", dir, unwrapPath(err))
	}
	removed := 0
	for _, name := range names {
		if strings.HasPrefix(name, tmpPrefix) && strings.HasSuffix(name, tmpSuffix) {
			if err := root.Remove(name); err != nil {
				return removed, fmt.Errorf("remove %s: %w", filepath.Join(dir, name), unwrapPath(err))
			}
			removed++
		}
	}
	return removed, nil
}

func writeFile(f *os.File, families []*dto.MetricFamily) error {
	enc := expfmt.NewEncoder(f, expfmt.NewFormat(expfmt.TypeTextPlain))
	var err error
	for _, mf := range families {
		if err = enc.Encode(mf); err != nil {
			break
		}
	}
	if err == nil {
		// node_exporter runs as another user: readable by all, whatever the
		// umask. Fchmod, as Root.Chmod could be raced onto a symlink.
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	return err
}

// openDir opens dir for writing in, after making it if it is missing. It
// refuses a directory that another non-root user could use to swap our file
// or to send our write elsewhere: a symlink owned by such a user, a
// directory owned by one, or a directory writable by others without the
// sticky bit. The checks are made on the directory as opened, so it cannot
// be swapped between the check and the write.
func openDir(dir string) (*os.Root, error) {
	link, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("textfile directory %s is missing and cannot be made: %w", dir, unwrapPath(err))
		}
		link, err = os.Lstat(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("textfile directory %s: %w", dir, unwrapPath(err))
	}
	symlink := link.Mode()&fs.ModeSymlink != 0
	if uid := owner(link); symlink && !trusted(uid) {
		return nil, fmt.Errorf("textfile directory %s is a symlink owned by %s: only links owned by root or by this user (%s) are followed; fix: remove it, then install -d -m 0755 %s",
			dir, userName(uid), userName(os.Geteuid()), dir)
	}
	if !symlink && !link.IsDir() {
		return nil, fmt.Errorf("textfile directory %s is not a directory", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("textfile directory %s: %w", dir, unwrapPath(err))
	}
	info, err := root.Stat(".")
	if err == nil && !symlink && !os.SameFile(link, info) {
		err = errors.New("it was replaced while being opened")
	}
	if err == nil {
		err = checkOpened(dir, info)
	}
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("textfile directory %s: %w", dir, err)
	}
	return root, nil
}

// checkOpened refuses a directory another non-root user could change.
func checkOpened(dir string, info fs.FileInfo) error {
	mode := info.Mode()
	if uid := owner(info); !trusted(uid) {
		return fmt.Errorf("owned by %s (mode %s), who could replace the file node_exporter reads; fix: remove it, then install -d -m 0755 %s as %s",
			userName(uid), mode, dir, userName(os.Geteuid()))
	}
	if mode.Perm()&0o002 != 0 && mode&fs.ModeSticky == 0 {
		return fmt.Errorf("writable by every user without the sticky bit (mode %s, owned by %s), so anyone could replace the file node_exporter reads; fix: chmod o-w %s (or install -d -m 0755 %s)",
			mode, userName(owner(info)), dir, dir)
	}
	return nil
}

// trusted owners are root and the user this runs as.
func trusted(uid int) bool { return uid == 0 || uid == os.Geteuid() }

func owner(info fs.FileInfo) int {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

// userName is "user 65534 (nobody)", or "user 65534" where no name is known.
func userName(uid int) string {
	id := strconv.Itoa(uid)
	if u, err := user.LookupId(id); err == nil {
		return "user " + id + " (" + u.Username + ")"
	}
	return "user " + id
}

// unwrapPath drops the path from an *os.PathError, which the message names
// already.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	return err
}

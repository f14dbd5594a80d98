package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// AccessError says that the user QEMU runs as cannot reach a file a VM
// needs.
type AccessError struct {
	User  string      // the user QEMU runs as
	Op    string      // "enter" (a directory), "read" or "execute" (a file)
	Path  string      // the first path on the way that refuses it
	Mode  fs.FileMode // Path's permission bits
	Owner string      // Path's owner, by name where it has one
}

func (e *AccessError) Error() string {
	bit := "x"
	if e.Op == "read" {
		bit = "r"
	}
	return fmt.Sprintf("qemu: QEMU runs as user %s, who cannot %s %s (owner %s, mode %04o): run 'chmod o+%s %s'",
		e.User, e.Op, e.Path, e.Owner, uint32(e.Mode.Perm()), bit, e.Path)
}

// accessScript runs as QEMU's user with (op, path) pairs as arguments and
// makes each check in order; at the first that fails it prints the pair
// and exits 3. "test" asks the kernel (access(2)), so modes, ACLs and the
// user's groups all count as they will for QEMU.
const accessScript = `while [ $# -gt 1 ]; do
	case $1 in
	read) test -r "$2" ;;
	*) test -x "$2" ;;
	esac || { printf '%s\n%s' "$1" "$2"; exit 3; }
	shift 2
done`

// CheckAccess checks, before any VM starts, that QEMU run as Config.User
// can do what a VM asks of the host's files: execute the QEMU binary, enter
// every directory on the way to each of paths, and enter each path that is
// a directory or read each one that is a file. Symbolic links are followed;
// a path that does not exist yet is checked as far as it exists. Without a
// change of user (the server is not root, or the user is missing) there is
// nothing to check. A path that blocks QEMU gives an *AccessError naming
// it, the first on the way.
func (d *Driver) CheckAccess(paths ...string) error {
	if d.uid < 0 {
		return nil
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return fmt.Errorf("qemu: %s not found: %w", d.cfg.Binary, err)
	}
	var args []string
	seen := map[string]bool{}
	add := func(op, p string) {
		if !seen[op+" "+p] {
			seen[op+" "+p] = true
			args = append(args, op, p)
		}
	}
	for i, p := range append([]string{bin}, paths...) {
		p, fi, err := resolve(p)
		if err != nil {
			return fmt.Errorf("qemu: check access of %s: %w", p, err)
		}
		for _, dir := range ancestors(p) {
			add("enter", dir)
		}
		switch {
		case i == 0:
			add("execute", p)
		case fi.IsDir():
			add("enter", p)
		default:
			add("read", p)
		}
	}
	// The same credentials as spawn's: the user's uid and gid, no other
	// groups.
	cmd := exec.Command("/bin/sh", append([]string{"-c", accessScript, "sh"}, args...)...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(d.uid), Gid: uint32(d.gid)}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err == nil {
		return nil
	}
	op, p, ok := strings.Cut(stdout.String(), "\n")
	if ee, isExit := errors.AsType[*exec.ExitError](err); !isExit || ee.ExitCode() != 3 || !ok {
		return fmt.Errorf("qemu: check access as user %s: %w: %s", d.cfg.User, err, strings.TrimSpace(stderr.String()))
	}
	ae := &AccessError{User: d.cfg.User, Op: op, Path: p, Owner: "?"}
	if fi, err := os.Stat(p); err == nil {
		ae.Mode = fi.Mode()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ae.Owner = ownerName(st.Uid)
		}
	}
	return ae
}

// resolve makes p absolute and follows its symbolic links. If p does not
// exist it stands for the longest part of it that does: the directory
// whatever is made there later is reached through.
func resolve(p string) (string, fs.FileInfo, error) {
	p, err := filepath.Abs(p)
	if err != nil {
		return p, nil, err
	}
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			fi, err := os.Stat(real)
			return real, fi, err
		}
		if !errors.Is(err, fs.ErrNotExist) || p == "/" {
			return p, nil, err
		}
		p = filepath.Dir(p)
	}
}

// ancestors returns the directories above the absolute path p, from "/"
// down.
func ancestors(p string) []string {
	var dirs []string
	for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
		dirs = append([]string{dir}, dirs...)
		if dir == "/" {
			return dirs
		}
	}
}

// ownerName is the name of the user with uid, or the number.
func ownerName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return id
}

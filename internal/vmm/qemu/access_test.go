package qemu

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/testenv"
)

// accessTree makes, in a directory every user can enter:
//
//	locked/      0700, root's: what a --home under /root meets
//	  home/      0711
//	open/        0711
//	  home/      0711
//	    kernel   0644
//	    secret   0600
//	  qemu       0755, a copy of true(1)
//	  qemu-root  0700, the same
//
// and returns its root.
func accessTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	// t.TempDir makes its directories 0700.
	for _, d := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	trueBin, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.ReadFile(trueBin)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{"locked", 0o700}, {"locked/home", 0o711}, {"open", 0o711}, {"open/home", 0o711}} {
		if err := os.Mkdir(filepath.Join(root, d.path), d.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(root, d.path), d.mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
		data []byte
	}{{"open/home/kernel", 0o644, []byte("elf")}, {"open/home/secret", 0o600, []byte("elf")},
		{"open/qemu", 0o755, exe}, {"open/qemu-root", 0o700, exe}} {
		p := filepath.Join(root, f.path)
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestCheckAccess protects the start-time check of what QEMU's user can
// reach: a data directory under a 0700 directory of root's (as under
// /root), a file it cannot read and a QEMU binary it cannot execute are
// each refused with the path that blocks and the chmod that opens it,
// while a tree of 0711 directories passes, paths not made yet included.
func TestCheckAccess(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "the check runs only when the server is root, and running it as another user needs root")
	}
	root := accessTree(t)
	// Any unprivileged uid serves: setuid needs no passwd entry.
	driver := func(bin string) *Driver {
		return &Driver{cfg: Config{Binary: filepath.Join(root, bin), User: "nobody"}, uid: 65534, gid: 65534}
	}

	for _, tc := range []struct {
		name  string
		bin   string
		paths []string
		op    string // "" for no error
		path  string // the path named
	}{
		{"reachable", "open/qemu", []string{"open/home", "open/home/kernel", "open/home/sessions/not-yet"}, "", ""},
		{"home under a 0700 directory", "open/qemu", []string{"open/home/kernel", "locked/home/sessions"}, "enter", "locked"},
		{"unreadable file", "open/qemu", []string{"open/home/kernel", "open/home/secret"}, "read", "open/home/secret"},
		{"binary only root may run", "open/qemu-root", []string{"open/home"}, "execute", "open/qemu-root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var paths []string
			for _, p := range tc.paths {
				paths = append(paths, filepath.Join(root, p))
			}
			err := driver(tc.bin).CheckAccess(paths...)
			if tc.op == "" {
				if err != nil {
					t.Fatalf("CheckAccess: %v, want nil", err)
				}
				return
			}
			ae, ok := errors.AsType[*AccessError](err)
			if !ok {
				t.Fatalf("CheckAccess: %v, want an *AccessError", err)
			}
			t.Logf("error: %v", err)
			want := filepath.Join(root, tc.path)
			if ae.Op != tc.op || ae.Path != want || ae.Owner != "root" {
				t.Errorf("error says: %s %s (owner %s), want %s %s (owner root)", ae.Op, ae.Path, ae.Owner, tc.op, want)
			}
			if msg := err.Error(); !strings.Contains(msg, "cannot "+tc.op+" "+want) || !strings.Contains(msg, "chmod o+") {
				t.Errorf("message %q does not name the path and the fix", msg)
			}
		})
	}

	// Without a change of user nothing is checked.
	d := driver("open/qemu-root")
	d.uid, d.gid = -1, -1
	if err := d.CheckAccess(filepath.Join(root, "locked/home")); err != nil {
		t.Errorf("CheckAccess without a change of user: %v, want nil", err)
	}
}

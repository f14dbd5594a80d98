package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// A file's info names its owner: the uid and gid E2B's entries (and
// cove's file API) show.
func TestInfoHasTheOwner(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Not root's (0 is also what an info without owners says): as
	// root, the file is given away; else it is the tester's own.
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 1234, 5678
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	got := info("f", fi)
	if got.UID != uid || got.GID != gid {
		t.Errorf("info: uid %d gid %d, want %d %d", got.UID, got.GID, uid, gid)
	}
}

package qemutest

import (
	"os"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/sys/fs/cgroup`:        "/sys/fs/cgroup",
		`/mnt/with\040space`:    "/mnt/with space",
		`/tab\011and\134slash`:  "/tab\tand\\slash",
		`/short\04`:             `/short\04`,
		`/not\0xyoctal\040end`:  `/not\0xyoctal end`,
		`/trailing backslash\\`: `/trailing backslash\\`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReadCredsOfSelf reads this process's credentials, which the test
// knows otherwise.
func TestReadCredsOfSelf(t *testing.T) {
	c, err := ReadCreds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if c.UIDs[0] != os.Getuid() || c.UIDs[1] != os.Geteuid() || c.GIDs[0] != os.Getgid() || c.GIDs[1] != os.Getegid() {
		t.Errorf("uids %v gids %v, want real/effective %d/%d and %d/%d", c.UIDs, c.GIDs, os.Getuid(), os.Geteuid(), os.Getgid(), os.Getegid())
	}
	if len(c.CapEff) != 16 {
		t.Errorf("CapEff %q, want 16 hex digits", c.CapEff)
	}
}

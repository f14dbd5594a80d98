package main_test

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/testenv"
	"github.com/cove-dev/cove/internal/vmtest"
)

// TestServerRefusesHomeQEMUCannotReach protects the start-time check of the
// QEMU user's access: a root server whose --home lies under a 0700
// directory of root's (as /root is) refuses to start, naming that directory
// and both fixes, before it fetches a kernel or listens; before the check,
// it started and failed the first create with "fork/exec
// /usr/bin/qemu-system-x86_64: permission denied".
func TestServerRefusesHomeQEMUCannotReach(t *testing.T) {
	// CI runs the tests as root, on a system with the user nobody.
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "the server runs QEMU as another user only when it is root")
	}
	vmtest.Require(t) // qemu.New needs the QEMU binary
	if _, err := user.Lookup("nobody"); err != nil {
		testenv.Skipf(t, "no user 'nobody' to run QEMU as: %v", err)
	}
	cove := testBinaries(t)
	root := t.TempDir()
	for _, d := range []string{filepath.Dir(root), root} { // t.TempDir makes them 0700
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	locked := filepath.Join(root, "locked")
	if err := os.Mkdir(locked, 0o700); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(locked, "home")

	// The deadline only bounds a server that wrongly starts (it would go
	// on to fetch a kernel and serve).
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cove, "server", "--listen", "127.0.0.1:0", "--home", home,
		"--agent", cove, "--qemu-user", "nobody")
	out, err := cmd.CombinedOutput()
	t.Logf("cove server: %v\n%s", err, out)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() <= 0 {
		t.Fatalf("cove server with a --home QEMU cannot reach: %v, want it to exit with an error", err)
	}
	for _, want := range []string{
		"QEMU runs as user nobody, who cannot enter " + locked + " (owner root, mode 0700)",
		"chmod o+x " + locked,
		"choose a --home outside " + locked,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output does not say %q", want)
		}
	}
	if strings.Contains(string(out), "listening") {
		t.Error("the server listened before refusing")
	}
}

package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/policy"
)

// teamGrant lets the members of team platform read each other's sessions.
const teamGrant = `
@id("team-platform-read")
permit (
  principal in Cove::Team::"platform",
  action == Cove::Action::"session.read",
  resource in Cove::Team::"platform"
);
`

// Two engineers of team platform, one's session and the other's read.
var (
	carol      = policy.Principal{ID: "u_carol", Kind: policy.KindEngineer, Teams: []string{"platform"}}
	aliceSess  = policy.Resource{Type: policy.ResourceSession, ID: "s-1", Owner: "u_alice", Teams: []string{"platform"}}
	carolReads = policy.Request{Principal: carol, Action: policy.SessionRead, Resource: aliceSess}
)

func writeFile(t *testing.T, path, src string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestServerRefusesMalformedPolicy protects the start: a --policy that
// does not check (a syntax error, a misspelt action) or cannot be read
// stops 'cove server' before it makes its home, with each problem at its
// line and column.
func TestServerRefusesMalformedPolicy(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"syntax.cedar", "permit (principal, action, resource)\nwhen { principal == };\n",
			[]string{"does not check, so the server does not start", "syntax.cedar:2:22: syntax error"}},
		{"typo.cedar", string(policy.Default()) + "\n@id(\"typo\")\npermit (principal, action == Cove::Action::\"session.exce\", resource);\n",
			[]string{"does not check", "typo.cedar:", `policy "typo"`, "session.exce"}},
		{"missing.cedar", "", []string{"server: --policy:", "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			if tc.src != "" {
				writeFile(t, path, tc.src)
			}
			home := filepath.Join(t.TempDir(), "home")
			err := runServer(t.Context(), serverConfig{Listen: "127.0.0.1:0", Home: home, Policy: path})
			if err == nil {
				t.Fatal("the server started with a policy that does not check")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if _, serr := os.Stat(home); !os.IsNotExist(serr) {
				t.Errorf("the server made its home before refusing the policy: %v", serr)
			}
		})
	}
}

// syncBuffer is a log destination safe for the watcher's goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestPolicyReload protects the SIGHUP reload: a file that no longer
// checks is refused, logged with its problem, and the policy in force
// stays (the teammate still reads); a file that checks replaces it (the
// teammate no longer reads). The same happens on a real SIGHUP.
func TestPolicyReload(t *testing.T) {
	path := writeFile(t, filepath.Join(t.TempDir(), "cove.cedar"), string(policy.Default())+teamGrant)
	eng, err := loadPolicy(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	if d := eng.Decide(carolReads); !d.Allow {
		t.Fatalf("the loaded grant does not let the teammate read: %s", d.Reason)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))

	writeFile(t, path, "permit (principal, action, resource)\nwhen { principal == };\n")
	if err := reloadPolicy(t.Context(), eng, path, log); err == nil || !strings.Contains(err.Error(), "cove.cedar:2:22") {
		t.Errorf("reload of a malformed policy: %v, want its problem at 2:22", err)
	}
	if d := eng.Decide(carolReads); !d.Allow {
		t.Errorf("after a refused reload the old policy is gone: %s", d.Reason)
	}
	if out := logs.String(); !strings.Contains(out, "reload refused; the policy in force stays") || !strings.Contains(out, "cove.cedar:2:22") {
		t.Errorf("the refused reload is not logged with its problem:\n%s", out)
	}

	writeFile(t, path, string(policy.Default()))
	if err := reloadPolicy(t.Context(), eng, path, log); err != nil {
		t.Fatalf("reload of the default policy: %v", err)
	}
	if d := eng.Decide(carolReads); d.Allow {
		t.Errorf("after reloading the default policy the teammate still reads (%s)", d.Reason)
	}

	// The same over a real SIGHUP, which the watcher catches (unhandled,
	// it would end the test binary).
	writeFile(t, path, string(policy.Default())+teamGrant)
	watchPolicy(t.Context(), eng, path, log)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !eng.Decide(carolReads).Allow {
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not reload the policy; log:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

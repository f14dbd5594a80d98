package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/audit"
)

// TestAuditVerifyAndKey: 'cove audit key' prints the log's verifier key;
// 'cove audit verify' passes a good copy (0), names a tampered entry (3),
// refuses a rollback through --state (3), and exits 2 on usage errors.
func TestAuditVerifyAndKey(t *testing.T) {
	ctx := context.Background()
	home := t.TempDir()
	dir := filepath.Join(home, auditDir)
	l, err := audit.Open(ctx, dir, audit.Options{Origin: "cove.audit/clitest"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := l.Append(ctx, audit.Entry{Time: time.Now(), Actor: audit.Actor{Kind: audit.ActorCove}, Action: "session.park", Target: audit.Target{Session: "s-" + string(rune('a'+i))}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runCLI(t, "", "", "audit", "key", "--home", home)
	if code != 0 || strings.Count(out, "+") < 2 {
		t.Fatalf("audit key: %d %q %q", code, out, errOut)
	}
	vkey := strings.TrimSpace(out)
	keyFile := filepath.Join(t.TempDir(), "audit.pub")
	os.WriteFile(keyFile, []byte(out), 0o644)
	state := filepath.Join(t.TempDir(), "state.json")

	code, out, errOut = runCLI(t, "", "", "audit", "verify", "--dir", dir, "--key", keyFile, "--state", state)
	if code != 0 || !strings.Contains(out, "verified 5 entries") {
		t.Fatalf("audit verify: %d %q %q", code, out, errOut)
	}

	// Tamper: flip a byte of the third entry's JSON.
	bundle := filepath.Join(dir, "tile", "entries", "000.p", "5")
	raw, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(raw), `"s-c"`)
	raw[i+2] = 'x'
	os.WriteFile(bundle, raw, 0o644)
	code, out, _ = runCLI(t, "", "", "audit", "verify", "--dir", dir, "--key", vkey)
	if code != exitTampered || !strings.Contains(out, "entry 2: altered") {
		t.Fatalf("audit verify of a tampered log: %d %q", code, out)
	}

	// Rollback: a state file that has seen a larger log.
	os.WriteFile(state, []byte(`{"origin":"cove.audit/clitest","size":9,"root":""}`), 0o644)
	raw[i+2] = 'c'
	os.WriteFile(bundle, raw, 0o644)
	code, out, _ = runCLI(t, "", "", "audit", "verify", "--dir", dir, "--key", vkey, "--state", state)
	if code != exitTampered || !strings.Contains(out, "rollback") {
		t.Fatalf("audit verify of a rolled-back log: %d %q", code, out)
	}

	if code, _, _ = runCLI(t, "", "", "audit", "verify", "--dir", dir); code != 2 {
		t.Fatalf("audit verify without --key: exit %d, want 2", code)
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/apiserver"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/policy"
	"github.com/cove-dev/cove/internal/store/sqlite"
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

// auditServer is identityServer with an audit log at home/audit, wired as
// cove server wires it.
func auditServer(t *testing.T, home string) (string, *audit.Log) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	l, err := audit.Open(t.Context(), filepath.Join(home, auditDir), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	srv := httptest.NewServer(apiserver.New(apiserver.Config{
		Sessions:      noSessions{},
		Token:         testToken,
		Identities:    &identity.Directory{Store: st},
		Authenticator: identity.NewAuthenticator(identity.AuthConfig{AdminToken: testToken, Store: st}),
		Authorize:     (&apiserver.PolicyGate{Policy: policy.New(), Records: st}).Authorize,
		Audit:         l,
		AuditLog:      l,
	}).Handler())
	t.Cleanup(srv.Close)
	return srv.URL, l
}

// TestAuditCommands: against a real server with a real log, 'cove audit
// log --json' lists what was done (users made, a token minted, by whom),
// filtered by actor; 'proof' prints a proof that checks; 'export' streams
// every entry in order; 'key' asks the server; an engineer is refused;
// and 'cove audit verify' passes the server's log directory.
func TestAuditCommands(t *testing.T) {
	home := t.TempDir()
	addr, l := auditServer(t, home)
	admin := adminUserToken(t, addr)
	if code, _, errOut := runAs(t, addr, testToken, "user", "add", "bob"); code != 0 {
		t.Fatal(errOut)
	}
	code, out, errOut := runAs(t, addr, admin, "audit", "log", "--json")
	var recs []api.AuditRecord
	if code != 0 || json.Unmarshal([]byte(out), &recs) != nil {
		t.Fatalf("audit log --json: %d %q %q", code, out, errOut)
	}
	var actions []string
	for _, r := range recs {
		e, err := audit.ParseEntry(r.Entry)
		if err != nil {
			t.Fatal(err)
		}
		actions = append(actions, e.Action+"/"+string(e.Decision))
	}
	want := []string{"user.create/allow", "token.mint/allow", "token.mint/", "user.create/allow"}
	if strings.Join(actions, " ") != strings.Join(want, " ") {
		t.Fatalf("audit log: %v, want %v", actions, want)
	}
	// One more, by the operator (an admin user): not the admin token's.
	if code, _, errOut := runAs(t, addr, admin, "user", "add", "carol"); code != 0 {
		t.Fatal(errOut)
	}
	code, out, _ = runAs(t, addr, admin, "audit", "log", "--actor", "admin")
	if code != 0 || strings.Count(out, "\n") != 5 || !strings.Contains(out, "user:admin   token.mint") || strings.Contains(out, "carol") {
		t.Errorf("audit log --actor admin (the admin token's four entries):\n%s", out)
	}

	code, out, errOut = runAs(t, addr, admin, "audit", "proof", "3")
	var p api.AuditProof
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil || p.Index != 3 || p.LeafHash != recs[3].LeafHash {
		t.Fatalf("audit proof 3: %d %q %q", code, out, errOut)
	}

	code, out, _ = runAs(t, addr, admin, "audit", "export")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != len(recs)+1 { // and carol's
		t.Fatalf("audit export: %d, %d lines, want %d", code, len(lines), len(recs)+1)
	}
	for i, line := range lines {
		var r api.AuditRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil || r.Index != uint64(i) || i < len(recs) && r.LeafHash != recs[i].LeafHash {
			t.Fatalf("export line %d: %q", i, line)
		}
	}

	code, out, _ = runAs(t, addr, admin, "audit", "key")
	if code != 0 || strings.TrimSpace(out) != l.VerifierKey() {
		t.Errorf("audit key via the API: %d %q, want %q", code, out, l.VerifierKey())
	}
	_, bob := mintFor(t, addr, "bob")
	if code, _, errOut := runAs(t, addr, bob, "audit", "log"); code != 1 || !strings.Contains(errOut, "audit.read") {
		t.Errorf("an engineer's audit log: %d %q, want refused by the policy", code, errOut)
	}

	size, err := l.Size(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runCLI(t, "", "", "audit", "verify", "--dir", filepath.Join(home, auditDir), "--key", l.VerifierKey())
	if code != 0 || !strings.Contains(out, fmt.Sprintf("verified %d entries", size)) {
		t.Fatalf("audit verify of the server's log: %d %q %q", code, out, errOut)
	}
}

// mintFor mints user name a token with the admin token.
func mintFor(t *testing.T, addr, name string) (string, string) {
	t.Helper()
	tok, err := api.NewClient(addr, testToken).CreateToken(t.Context(), api.CreateTokenRequest{Name: "t", User: name})
	if err != nil {
		t.Fatal(err)
	}
	return tok.ID, tok.Secret
}

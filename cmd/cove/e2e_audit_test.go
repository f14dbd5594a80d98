package main_test

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
)

var verifierKeyLine = regexp.MustCompile(`verifier_key=(\S+)`)

// TestEndToEndAudit: a real 'cove server' keeps its audit log at
// $COVE_HOME/audit, says its verifier key at start, and sends tessera's
// own logging to its log; an exec is announced with its argv and its
// outcome has the exit code; an idle park, which no API call asked for, is
// logged by cove itself; the CLI lists, proves and exports it; and once
// the server stopped, 'cove audit verify' passes the log directory.
func TestEndToEndAudit(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer("COVE_IDLE_TIMEOUT=5s")
	m := verifierKeyLine.FindStringSubmatch(e.srv.log.String())
	if m == nil || !strings.Contains(e.srv.log.String(), "from=tessera") {
		t.Fatalf("the server's log has no verifier key, or none of tessera's lines:%s", e.serverLog())
	}
	key := m[1]
	if got := strings.TrimSpace(e.ok(nil, "audit", "key")); got != key {
		t.Fatalf("cove audit key %q, the server logged %q", got, key)
	}

	id := e.create()
	if _, errOut, code := e.run(nil, "exec", id, "--", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("exec exit 7: exit %d, %q", code, errOut)
	}
	e.waitState(id, api.StateParked, 3*time.Minute)

	var recs []api.AuditRecord
	if err := json.Unmarshal([]byte(e.ok(nil, "audit", "log", "--session", id, "--json")), &recs); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		en, err := audit.ParseEntry(r.Entry)
		if err != nil {
			t.Fatal(err)
		}
		s := string(en.Actor.Kind) + " " + en.Action + " " + string(en.Decision)
		switch {
		case en.Action == "session.exec" && en.Decision == audit.Allow && slices.Equal(en.Target.Argv, []string{"sh", "-c", "exit 7"}):
			s += " argv"
		case en.Action == "session.exec" && en.Outcome != nil && en.Outcome.ExitCode != nil && *en.Outcome.ExitCode == 7 && en.Ref != nil:
			s += " exit 7"
		}
		got = append(got, strings.Join(strings.Fields(s), " "))
	}
	// The create's announcement came before the session had an id: its
	// outcome names it.
	for _, want := range []string{"user session.create", "user session.exec allow argv", "user session.exec exit 7", "cove session.park allow", "cove session.park"} {
		if !slices.Contains(got, want) {
			t.Errorf("the session's audit entries %q lack %q", got, want)
		}
	}
	e.ok(nil, "audit", "proof", "0")
	if lines := strings.Count(e.ok(nil, "audit", "export"), "\n"); lines < len(recs) {
		t.Errorf("audit export gave %d entries, fewer than the session's %d", lines, len(recs))
	}

	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if out := e.ok(nil, "audit", "verify", "--dir", filepath.Join(e.home, "audit"), "--key", key); !strings.Contains(out, "verified") {
		t.Fatalf("audit verify: %q", out)
	}
}

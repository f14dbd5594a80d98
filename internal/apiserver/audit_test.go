package apiserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/audit/audittest"
	"github.com/cove-dev/cove/internal/witness"
)

// The audit log as cove server wires it: a real tessera log in a
// temporary directory behind a real HTTP server over the fake session
// manager.

type auditEnv struct {
	*testEnv
	log *audit.Log
	dir string
}

func newAuditEnv(t *testing.T) *auditEnv {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "audit")
	l, err := audit.Open(t.Context(), dir, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	e := newEnv(t, func(c *Config) { c.Audit, c.AuditLog = l, l })
	return &auditEnv{testEnv: e, log: l, dir: dir}
}

// records reads the whole log back.
func (e *auditEnv) records(t *testing.T) []audit.Record {
	t.Helper()
	recs, err := e.log.Entries(context.Background(), 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// find returns the records of action with decision d ("" for outcomes).
func find(recs []audit.Record, action string, d audit.Decision) []audit.Record {
	var out []audit.Record
	for _, r := range recs {
		if r.Entry.Action == action && r.Entry.Decision == d {
			out = append(out, r)
		}
	}
	return out
}

// dirHolds reports whether any file under dir contains b.
func dirHolds(t *testing.T, dir string, b []byte) bool {
	t.Helper()
	found := false
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		found = found || bytes.Contains(data, b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestAuditExec: an exec is announced with its argv and cwd before it
// runs, then its outcome (exit code, duration) refers to the announcement.
func TestAuditExec(t *testing.T) {
	e := newAuditEnv(t)
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus { return ExitStatus{Code: 3} })
	res := decode[api.ExecResult](t, e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"make", "test"}, Cwd: "/src"}), 200)
	if res.ExitCode != 3 {
		t.Fatalf("exit code %d", res.ExitCode)
	}
	recs := e.records(t)
	ann := find(recs, "session.exec", audit.Allow)
	out := find(recs, "session.exec", "")
	if len(ann) != 1 || len(out) != 1 {
		t.Fatalf("want one announcement and one outcome, got %d and %d: %+v", len(ann), len(out), recs)
	}
	a, o := ann[0].Entry, out[0].Entry
	if strings.Join(a.Target.Argv, " ") != "make test" || a.Target.Cwd != "/src" || a.Target.Session != "s1" {
		t.Errorf("announcement target %+v", a.Target)
	}
	if a.Actor.Kind != audit.ActorUser || a.Actor.User == "" {
		t.Errorf("announcement actor %+v, want the harness admin user", a.Actor)
	}
	if o.Ref == nil || *o.Ref != ann[0].Index || out[0].Index <= ann[0].Index {
		t.Errorf("outcome %d refers to %v, want %d", out[0].Index, o.Ref, ann[0].Index)
	}
	if o.Outcome == nil || o.Outcome.ExitCode == nil || *o.Outcome.ExitCode != 3 {
		t.Errorf("outcome %+v, want exit code 3", o.Outcome)
	}
}

// TestAuditRefusals: a 401 is an auth.failed deny by an anonymous actor,
// without the token presented; a 403 is a deny of the verb by the user
// refused.
func TestAuditRefusals(t *testing.T) {
	e := newAuditEnv(t)
	bogus := "bogus-" + rand.Text()
	wantError(t, e.do("POST", "/v1/sessions/s1/park", nil, authAs(bogus)...), 401, api.CodeUnauthorized)

	ctx := context.Background()
	if _, err := e.admin.dir.AddUser(ctx, api.CreateUserRequest{Name: "eve", Kind: api.UserEngineer}); err != nil {
		t.Fatal(err)
	}
	tok, err := e.admin.dir.CreateToken(ctx, api.CreateTokenRequest{Name: "eve", User: "eve"})
	if err != nil {
		t.Fatal(err)
	}
	ran := atomic.Bool{}
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus { ran.Store(true); return ExitStatus{} })
	wantError(t, e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"id"}}, authAs(tok.Secret)...), 403, api.CodeForbidden)

	recs := e.records(t)
	failed := find(recs, "auth.failed", audit.Deny)
	if len(failed) != 1 || failed[0].Entry.Actor.Kind != audit.ActorAnonymous || failed[0].Entry.Target.Session != "s1" {
		t.Errorf("auth.failed entries %+v, want one by an anonymous actor about s1", failed)
	}
	denied := find(recs, "session.exec", audit.Deny)
	if len(denied) != 1 || denied[0].Entry.Actor.User != tok.UserID {
		t.Errorf("denied exec entries %+v, want one by eve (%s)", denied, tok.UserID)
	}
	if len(find(recs, "session.exec", audit.Allow)) != 0 || ran.Load() {
		t.Error("the refused exec was announced or ran")
	}
	if dirHolds(t, e.dir, []byte(bogus)) || dirHolds(t, e.dir, []byte(tok.Secret)) {
		t.Error("a presented token is in the log")
	}
	if !dirHolds(t, e.dir, []byte(tok.UserID)) { // the scan sees the entries
		t.Error("positive control: eve's id is not found in the log")
	}
}

// TestAuditFileWrite: a write's outcome has the size and SHA-256 of what
// was written, and the log holds no byte of it.
func TestAuditFileWrite(t *testing.T) {
	e := newAuditEnv(t)
	content := []byte("the launch codes: " + rand.Text())
	if resp := e.do("PUT", "/v1/sessions/s1/files?path=/etc/codes", bytes.NewReader(content)); resp.StatusCode != 204 {
		t.Fatalf("write: %d", resp.StatusCode)
	}
	resp := e.do("GET", "/v1/sessions/s1/files?path=/etc/codes", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("read: %d", resp.StatusCode)
	}
	var got bytes.Buffer
	_, _ = got.ReadFrom(resp.Body)
	if !bytes.Equal(got.Bytes(), content) {
		t.Fatalf("read back %q", got.Bytes())
	}
	sum := sha256.Sum256(content)
	recs := e.records(t)
	for _, verb := range []string{"file.write", "file.read"} {
		ann, out := find(recs, verb, audit.Allow), find(recs, verb, "")
		if len(ann) != 1 || len(out) != 1 {
			t.Fatalf("%s: want an announcement and an outcome, got %+v", verb, recs)
		}
		o := out[0].Entry.Outcome
		if ann[0].Entry.Target.Path != "/etc/codes" || o == nil || o.Size == nil || *o.Size != int64(len(content)) || o.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: announcement %+v, outcome %+v; want the path, %d bytes, %x", verb, ann[0].Entry.Target, o, len(content), sum)
		}
	}
	if dirHolds(t, e.dir, content[len(content)-16:]) {
		t.Error("the file's content is in the log")
	}
	if !dirHolds(t, e.dir, []byte(hex.EncodeToString(sum[:]))) {
		t.Error("positive control: the file's hash is not found in the log")
	}
}

// TestAuditTokenMint: minting a token logs its id, never its secret.
func TestAuditTokenMint(t *testing.T) {
	e := newAuditEnv(t)
	decode[api.User](t, e.doJSON("POST", "/v1/users", api.CreateUserRequest{Name: "ci", Kind: api.UserService}), 201)
	tok := decode[api.CreatedToken](t, e.doJSON("POST", "/v1/tokens", api.CreateTokenRequest{Name: "ci", User: "ci"}), 201)
	out := find(e.records(t), "token.mint", "")
	if len(out) != 1 || out[0].Entry.Target.Token != tok.ID || out[0].Entry.Ref == nil {
		t.Fatalf("token.mint outcomes %+v, want one naming %s", out, tok.ID)
	}
	if dirHolds(t, e.dir, []byte(tok.Secret)) {
		t.Error("the token's secret is in the log")
	}
	if !dirHolds(t, e.dir, []byte(tok.ID)) {
		t.Error("positive control: the token's id is not found in the log")
	}
}

// TestAuditFailsClosed: while the log cannot be written, an exec answers
// 503 and its command does not run, a create answers 503 and makes no
// session; once it can again, both work, without a restart.
func TestAuditFailsClosed(t *testing.T) {
	e := newAuditEnv(t)
	var runs atomic.Int64
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus { runs.Add(1); return ExitStatus{} })
	exec := func() *http.Response {
		return e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"true"}})
	}
	sessions := func() int { return len(decode[sessionList](t, e.do("GET", "/v1/sessions", nil), 200).Sessions) }
	decode[api.ExecResult](t, exec(), 200)
	if runs.Load() != 1 {
		t.Fatalf("positive control: the command ran %d times, want 1", runs.Load())
	}
	before := sessions()

	repair := audittest.Break(t, e.log, e.dir)
	body := wantError(t, exec(), 503, api.CodeUnavailable)
	if !strings.HasPrefix(body.Message, "audit log unavailable: ") {
		t.Errorf("503 message %q", body.Message)
	}
	wantError(t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}), 503, api.CodeUnavailable)
	// A verb the gate announces itself (not its handler).
	wantError(t, e.do("PUT", "/v1/sessions/s1/files?path=/refused", strings.NewReader("x")), 503, api.CodeUnavailable)
	if runs.Load() != 1 || sessions() != before {
		t.Errorf("with the log unavailable: %d runs (want 1), %d sessions (want %d)", runs.Load(), sessions(), before)
	}

	repair()
	if resp := e.do("GET", "/v1/sessions/s1/files/stat?path=/refused", nil); resp.StatusCode != 404 {
		t.Errorf("the refused write made the file: stat answers %d", resp.StatusCode)
	}
	decode[api.ExecResult](t, exec(), 200)
	decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}), 201)
	if resp := e.do("PUT", "/v1/sessions/s1/files?path=/refused", strings.NewReader("x")); resp.StatusCode != 204 {
		t.Errorf("write once the log is back: %d", resp.StatusCode)
	}
	if runs.Load() != 2 || sessions() != before+1 {
		t.Errorf("log back: %d runs (want 2), %d sessions (want %d)", runs.Load(), sessions(), before+1)
	}
}

// TestAuditReadRoutes: an admin reads the entries (filtered by session),
// an entry's inclusion proof that verifies with the key the API gives,
// the checkpoint, and the export stream; an engineer is refused.
func TestAuditReadRoutes(t *testing.T) {
	e := newAuditEnv(t)
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus { return ExitStatus{} })
	decode[api.ExecResult](t, e.doJSON("POST", "/v1/sessions/s1/exec", api.ExecRequest{Argv: []string{"true"}}), 200)
	decode[api.Session](t, e.doJSON("POST", "/v1/sessions", api.CreateSessionRequest{}), 201)

	page := decode[api.AuditPage](t, e.do("GET", "/v1/audit/entries?session=s1", nil), 200)
	if len(page.Entries) != 2 {
		t.Fatalf("entries of s1: %+v, want the exec's announcement and outcome", page.Entries)
	}
	all := decode[api.AuditPage](t, e.do("GET", "/v1/audit/entries?n=1&from=1", nil), 200)
	if len(all.Entries) != 1 || all.Entries[0].Index != 1 || all.Next != 2 {
		t.Fatalf("one entry from 1: %+v", all)
	}
	key := decode[api.AuditKey](t, e.do("GET", "/v1/audit/key", nil), 200).Key
	if key != e.log.VerifierKey() {
		t.Fatalf("key %q, want the log's", key)
	}
	if _, err := e.log.WaitCheckpoint(t.Context(), 2); err != nil {
		t.Fatal(err)
	}
	cp := decode[api.AuditCheckpoint](t, e.do("GET", "/v1/audit/checkpoint", nil), 200)
	if cp.Size < 2 || cp.Note == "" {
		t.Fatalf("checkpoint %+v", cp)
	}
	pr := decode[api.AuditProof](t, e.do("GET", "/v1/audit/proof/1", nil), 200)
	p := audit.Proof{Index: pr.Index, Checkpoint: audit.Checkpoint{Note: []byte(pr.Checkpoint.Note)}}
	for _, h := range pr.Hashes {
		b, _ := hex.DecodeString(h)
		p.Hashes = append(p.Hashes, b)
	}
	if err := p.Verify(key, page.Entries[1].Entry); err != nil {
		t.Fatalf("the proof of entry 1 does not verify: %v", err)
	}
	wantError(t, e.do("GET", "/v1/audit/proof/999", nil), 404, api.CodeNotFound)

	resp := e.do("GET", "/v1/audit/export", nil)
	var lines int
	dec := json.NewDecoder(resp.Body)
	for {
		var rec api.AuditRecord
		if err := dec.Decode(&rec); err != nil {
			break
		}
		if rec.Index != uint64(lines) {
			t.Fatalf("export line %d is entry %d", lines, rec.Index)
		}
		lines++
	}
	if lines < 4 {
		t.Fatalf("export gave %d entries, want at least 4", lines)
	}

	ctx := context.Background()
	if _, err := e.admin.dir.AddUser(ctx, api.CreateUserRequest{Name: "eng", Kind: api.UserEngineer}); err != nil {
		t.Fatal(err)
	}
	tok, err := e.admin.dir.CreateToken(ctx, api.CreateTokenRequest{Name: "eng", User: "eng"})
	if err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do("GET", "/v1/audit/entries", nil, authAs(tok.Secret)...), 403, api.CodeForbidden)
}

// TestAuditPTYAttach: a terminal exec over the WebSocket is announced as
// session.pty with its argv before it runs, and its outcome has the exit
// code; with the log unavailable the client gets an in-band unavailable
// error and the command does not run.
func TestAuditPTYAttach(t *testing.T) {
	e := newAuditEnv(t)
	var runs atomic.Int64
	e.fake.setRun(func(p *fakeProc, req api.ExecRequest) ExitStatus { runs.Add(1); return ExitStatus{Code: 4} })
	attach := func() api.ExecEvent {
		c := dialExec(t, e.testEnv, "s1")
		wsSend(t, c, api.ExecRequest{Argv: []string{"bash", "-l"}, TTY: true, Rows: 24, Cols: 80})
		for {
			ev, err := wsRead(t, c)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if ev.Type == api.EventExit || ev.Type == api.EventError {
				return ev
			}
		}
	}
	if ev := attach(); ev.Type != api.EventExit || ev.ExitCode != 4 {
		t.Fatalf("attach: %+v", ev)
	}
	recs := e.records(t)
	ann, out := find(recs, "session.pty", audit.Allow), find(recs, "session.pty", "")
	if len(ann) != 1 || len(out) != 1 || strings.Join(ann[0].Entry.Target.Argv, " ") != "bash -l" ||
		out[0].Entry.Outcome == nil || out[0].Entry.Outcome.ExitCode == nil || *out[0].Entry.Outcome.ExitCode != 4 || *out[0].Entry.Ref != ann[0].Index {
		t.Fatalf("session.pty entries: %+v", recs)
	}

	audittest.Break(t, e.log, e.dir)
	if ev := attach(); ev.Type != api.EventError || ev.Error == nil || ev.Error.Code != api.CodeUnavailable || runs.Load() != 1 {
		t.Fatalf("attach with the log unavailable: %+v (%d runs), want an unavailable error and no run", ev, runs.Load())
	}
}

// TestAuditWitnessRoutes: an admin adds a witness (a real one, on
// loopback), whose cosignature the next checkpoints carry; the change is
// in the log, with the witness's URL; a bad key is a 400 that changes
// nothing; an engineer may not add one; removing an unknown one is a 404.
func TestAuditWitnessRoutes(t *testing.T) {
	e := newAuditEnv(t)
	w, err := witness.New(t.TempDir(), "witness.test/w", []string{e.log.VerifierKey()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws := httptest.NewServer(w)
	t.Cleanup(ws.Close)

	wantError(t, e.doJSON("POST", "/v1/audit/witnesses", api.AuditWitness{URL: ws.URL, Key: "nope"}), 400, api.CodeInvalid)
	wantError(t, e.doJSON("POST", "/v1/audit/witnesses", api.AuditWitness{URL: "ftp://x", Key: w.VerifierKey()}), 400, api.CodeInvalid)
	if got := decode[[]api.AuditWitness](t, e.do("GET", "/v1/audit/witnesses", nil), 200); len(got) != 0 {
		t.Fatalf("witnesses after refused adds: %+v", got)
	}
	added := decode[api.AuditWitness](t, e.doJSON("POST", "/v1/audit/witnesses", api.AuditWitness{URL: ws.URL, Key: w.VerifierKey()}), 201)
	if added.Name != "witness.test/w" || added.URL != ws.URL {
		t.Fatalf("added %+v", added)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := decode[[]api.AuditWitness](t, e.do("GET", "/v1/audit/witnesses", nil), 200)
		if len(got) == 1 && got[0].Cosigned {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the witness never co-signed a checkpoint: %+v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if a := find(e.records(t), "audit.witness.add", ""); len(a) != 1 || a[0].Entry.Target.Witness != ws.URL {
		t.Fatalf("audit.witness.add outcomes: %+v", a)
	}

	ctx := context.Background()
	if _, err := e.admin.dir.AddUser(ctx, api.CreateUserRequest{Name: "eng", Kind: api.UserEngineer}); err != nil {
		t.Fatal(err)
	}
	tok, err := e.admin.dir.CreateToken(ctx, api.CreateTokenRequest{Name: "eng", User: "eng"})
	if err != nil {
		t.Fatal(err)
	}
	wantError(t, e.doJSON("POST", "/v1/audit/witnesses", api.AuditWitness{URL: "http://127.0.0.1:1", Key: w.VerifierKey()}, authAs(tok.Secret)...), 403, api.CodeForbidden)
	wantError(t, e.do("DELETE", "/v1/audit/witnesses?url=http://nowhere", nil), 404, api.CodeNotFound)
	if resp := e.do("DELETE", "/v1/audit/witnesses?url="+ws.URL, nil); resp.StatusCode != 204 {
		t.Fatalf("remove: %d", resp.StatusCode)
	}
	if got := decode[[]api.AuditWitness](t, e.do("GET", "/v1/audit/witnesses", nil), 200); len(got) != 0 {
		t.Fatalf("witnesses after remove: %+v", got)
	}
}

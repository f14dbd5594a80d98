package audit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

const testOrigin = "cove.audit/test"

func openTest(t testing.TB, dir string, opts Options) *Log {
	t.Helper()
	if opts.Origin == "" {
		opts.Origin = testOrigin
	}
	l, err := Open(context.Background(), dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l
}

func closeTest(t testing.TB, l *Log) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// testEntry is entry i of a test: its Target.Path names it.
func testEntry(name string) Entry {
	code := 0
	return Entry{
		Time:     time.Date(2026, 12, 5, 7, 0, 0, 0, time.UTC),
		Actor:    Actor{Kind: ActorAgent, Session: "s-1", Agent: "claude", Subject: "alice"},
		Action:   "session.exec",
		Target:   Target{Session: "s-1", Path: name, Argv: []string{"make", "test"}},
		Decision: Allow,
		Outcome:  &Outcome{ExitCode: &code, DurationMS: 12},
	}
}

func TestCanonicalJSON(t *testing.T) {
	ref := uint64(41)
	size := int64(0)
	e := Entry{
		Time:     time.Date(2026, 12, 5, 7, 47, 34, 123456789, time.FixedZone("CET", 3600)),
		Actor:    Actor{Kind: ActorUser, User: "u-1", Issuer: "https://idp", Subject: "alice"},
		Action:   "session.file.write",
		Target:   Target{Session: "s-1", Path: "/work/a<b>.txt"},
		Decision: Allow,
		Outcome:  &Outcome{Size: &size, SHA256: "e3b0"},
		Ref:      &ref,
	}
	got, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"time":"2026-12-05T06:47:34.123456789Z","actor":{"kind":"user","user":"u-1","issuer":"https://idp","subject":"alice"},"action":"session.file.write","target":{"session":"s-1","path":"/work/a<b>.txt"},"decision":"allow","outcome":{"size":0,"sha256":"e3b0"},"ref":41}`
	if string(got) != want {
		t.Fatalf("canonical JSON\n got %s\nwant %s", got, want)
	}
	back, err := ParseEntry(got)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := back.Marshal()
	if string(again) != want {
		t.Fatalf("round trip changed the entry:\n%s", again)
	}
	if _, err := ParseEntry([]byte(`{"time":"2026-12-05T06:47:34Z","actor":{"kind":"cove"},"action":"x","headers":{"a":"b"}}`)); err == nil {
		t.Fatal("ParseEntry took an unknown field")
	}
	for _, bad := range []Entry{
		{Time: e.Time, Actor: Actor{Kind: ActorCove}},
		{Time: e.Time, Action: "x", Actor: Actor{Kind: "root"}},
		{Time: e.Time, Action: "x", Actor: Actor{Kind: ActorCove}, Decision: "maybe"},
		{Time: e.Time, Action: "x", Actor: Actor{Kind: ActorCove}, Target: Target{Argv: []string{strings.Repeat("a", MaxEntrySize)}}},
	} {
		if _, err := bad.Marshal(); !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("Marshal(%+v) = %v, want ErrInvalidEntry", bad.Actor, err)
		}
	}
}

// TestAppendConcurrentReadBack: concurrent appends get distinct, dense
// indexes; each entry reads back at its index; inclusion proofs verify
// against the signed checkpoint with the log's key and not another's.
func TestAppendConcurrentReadBack(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, filepath.Join(t.TempDir(), "audit"), Options{})
	const n, workers = 300, 16 // over one entry bundle (256)
	var mu sync.Mutex
	byIndex := map[uint64]string{}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; k < n; k += workers {
				name := fmt.Sprintf("e-%d", k)
				idx, err := l.Append(ctx, testEntry(name))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if prev, dup := byIndex[idx]; dup {
					errs <- fmt.Errorf("index %d given to %s and %s", idx, prev, name)
				}
				byIndex[idx] = name
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	recs, err := l.Entries(ctx, 0, n+10)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n {
		t.Fatalf("read %d entries, want %d", len(recs), n)
	}
	for i, r := range recs {
		if r.Index != uint64(i) || r.Entry.Target.Path != byIndex[r.Index] {
			t.Fatalf("record %d: index %d holds %q, Append said %q", i, r.Index, r.Entry.Target.Path, byIndex[r.Index])
		}
	}
	tail, err := l.Entries(ctx, 250, 20)
	if err != nil || len(tail) != 20 || tail[0].Index != 250 || tail[19].Index != 269 {
		t.Fatalf("Entries(250, 20) = %d records, %v", len(tail), err)
	}

	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cp, err := l.WaitCheckpoint(wctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(cp.Note, note.VerifierList(mustVerifier(t, l.VerifierKey()))); err != nil {
		t.Fatalf("checkpoint does not verify with VerifierKey: %v", err)
	}
	_, otherV := otherKey(t, testOrigin)
	if _, err := note.Open(cp.Note, note.VerifierList(mustVerifier(t, otherV))); err == nil {
		t.Fatal("checkpoint verifies with another key")
	}
	for _, i := range []uint64{0, 1, 255, 256, 299} {
		p, err := l.InclusionProof(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Verify(l.VerifierKey(), recs[i].Data); err != nil {
			t.Fatalf("proof of %d: %v", i, err)
		}
		if err := p.Verify(otherV, recs[i].Data); err == nil {
			t.Fatalf("proof of %d verifies with another key", i)
		}
		if err := p.Verify(l.VerifierKey(), recs[(i+1)%n].Data); err == nil {
			t.Fatalf("proof of %d verifies for entry %d", i, (i+1)%n)
		}
	}
	if _, err := l.InclusionProof(ctx, n+5); !errors.Is(err, ErrNotCommitted) {
		t.Fatalf("proof beyond the checkpoint: %v, want ErrNotCommitted", err)
	}
	var seen int
	err = l.Scan(ctx, 0, Filter{Session: "s-1", Actor: "alice"}, func(Record) error { seen++; return nil })
	if err != nil || seen != n {
		t.Fatalf("Scan matched %d, %v; want %d", seen, err, n)
	}
	seen = 0
	l.Scan(ctx, 0, Filter{Session: "s-2"}, func(Record) error { seen++; return nil })
	if seen != 0 {
		t.Fatalf("Scan for another session matched %d", seen)
	}
}

func mustVerifier(t testing.TB, vkey string) note.Verifier {
	t.Helper()
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func otherKey(t testing.TB, origin string) (note.Signer, string) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return s, vkey
}

// TestKeyFile: the key is created 0600 and refused once others may read
// it; its verifier key is derived from it; a second Open is refused.
func TestKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	l := openTest(t, dir, Options{})
	if _, err := Open(context.Background(), dir, Options{Origin: testOrigin}); err == nil {
		t.Fatal("a second Open of an open log succeeded")
	}
	vkey := l.VerifierKey()
	closeTest(t, l)
	keyPath := DefaultKeyPath(dir)
	fi, err := os.Stat(keyPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %s: %v, mode %v; want 0600", keyPath, err, fi.Mode())
	}
	if got, err := VerifierKeyFromFile(keyPath); err != nil || got != vkey {
		t.Fatalf("VerifierKeyFromFile = %q, %v; want %q", got, err, vkey)
	}
	if _, err := Open(context.Background(), dir, Options{Origin: "cove.audit/other"}); err == nil {
		t.Fatal("Open with another origin than the key's succeeded")
	}
	for _, mode := range []fs.FileMode{0o640, 0o604} {
		if err := os.Chmod(keyPath, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(context.Background(), dir, Options{Origin: testOrigin}); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("Open with key mode %04o: %v, want refused", mode, err)
		}
		if _, err := VerifierKeyFromFile(keyPath); err == nil {
			t.Fatalf("VerifierKeyFromFile with key mode %04o succeeded", mode)
		}
	}
	os.Chmod(keyPath, 0o600)
	l = openTest(t, dir, Options{})
	if l.VerifierKey() != vkey {
		t.Fatal("reopened log has another key")
	}
}

// TestAppendAfterClose fails closed.
func TestAppendAfterClose(t *testing.T) {
	l := openTest(t, filepath.Join(t.TempDir(), "audit"), Options{})
	if _, err := l.Append(context.Background(), testEntry("a")); err != nil {
		t.Fatal(err)
	}
	closeTest(t, l)
	if _, err := l.Append(context.Background(), testEntry("b")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append after Close: %v, want ErrUnavailable", err)
	}
}

package witness_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/audit"
	"github.com/cove-dev/cove/internal/witness"
	"golang.org/x/mod/sumdb/note"
)

const origin = "cove.audit/test"

// startWitness runs a witness of the logs with the given verifier keys
// on loopback, kept in dir.
func startWitness(t *testing.T, dir string, logKeys ...string) (*witness.Witness, string) {
	t.Helper()
	w, err := witness.New(dir, "witness.test/w1", logKeys, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w)
	t.Cleanup(srv.Close)
	return w, srv.URL
}

// openLog opens an audit log in dir whose key is keyPath.
func openLog(t *testing.T, dir, keyPath string) *audit.Log {
	t.Helper()
	l, err := audit.Open(t.Context(), dir, audit.Options{Origin: origin, KeyPath: keyPath, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l
}

func appendN(t *testing.T, l *audit.Log, n int, what string) uint64 {
	t.Helper()
	var last uint64
	for i := range n {
		idx, err := l.Append(t.Context(), audit.Entry{Actor: audit.Actor{Kind: audit.ActorCove}, Action: fmt.Sprintf("%s.%d", what, i)})
		if err != nil {
			t.Fatal(err)
		}
		last = idx
	}
	return last + 1
}

// waitCosigned waits until l publishes a checkpoint of at least size that
// its witnesses co-signed, and says whether it came.
func waitCosigned(t *testing.T, l *audit.Log, size uint64) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		cp, err := l.Checkpoint(ctx)
		ws, werr := l.Witnesses(ctx)
		if err == nil && werr == nil && cp.Size >= size && len(ws) > 0 && ws[0].Cosigned {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// A log handing its checkpoints to a witness gets them co-signed, which
// an offline verify requiring that witness accepts; one requiring another
// witness refuses. A second history of the same log (its key copied, other
// entries) gets no cosignature, so its verify fails: the fork is seen.
func TestWitnessCosignsAndRefusesFork(t *testing.T) {
	base := t.TempDir()
	keyPath := filepath.Join(base, "audit.key")
	dirA := filepath.Join(base, "a")
	a := openLog(t, dirA, keyPath)
	w, url := startWitness(t, filepath.Join(base, "witness"), a.VerifierKey())
	if _, err := a.AddWitness(t.Context(), audit.Witness{URL: url, Key: w.VerifierKey()}); err != nil {
		t.Fatal(err)
	}
	size := appendN(t, a, 3, "a")
	if !waitCosigned(t, a, size) {
		t.Fatal("the witness never co-signed log A's checkpoint")
	}
	// And it follows the log as it grows (a consistency proof each time).
	size = appendN(t, a, 300, "a2")
	if !waitCosigned(t, a, size) {
		t.Fatal("the witness never co-signed log A's grown checkpoint")
	}
	if err := a.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(t.Context(), dirA, a.VerifierKey(), "", w.VerifierKey())
	if err != nil || len(rep.Witnesses) != 1 {
		t.Fatalf("verify A with its witness: %v, %+v", err, rep)
	}
	other, err := witness.New(filepath.Join(base, "other"), "witness.test/other", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Verify(t.Context(), dirA, a.VerifierKey(), "", other.VerifierKey()); !errors.Is(err, audit.ErrTampered) {
		t.Fatalf("verify A requiring a witness that never saw it: %v, want ErrTampered", err)
	}

	// The fork: the same key signs another history, longer than A's.
	dirB := filepath.Join(base, "b")
	b := openLog(t, dirB, keyPath)
	if _, err := b.AddWitness(t.Context(), audit.Witness{URL: url, Key: w.VerifierKey()}); err != nil {
		t.Fatal(err)
	}
	sizeB := appendN(t, b, int(size)+5, "b")
	if _, err := b.WaitCheckpoint(t.Context(), sizeB); err != nil {
		t.Fatal(err)
	}
	// Give the witness the chance to (wrongly) co-sign: a later checkpoint
	// than the one awaited is published only after the witness answered.
	appendN(t, b, 1, "b2")
	if _, err := b.WaitCheckpoint(t.Context(), sizeB+1); err != nil {
		t.Fatal(err)
	}
	if ws, err := b.Witnesses(t.Context()); err != nil || len(ws) != 1 || ws[0].Cosigned {
		t.Fatalf("the forked log's witnesses: %+v, %v; want one that did not co-sign", ws, err)
	}
	if err := b.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Verify(t.Context(), dirB, b.VerifierKey(), ""); err != nil {
		t.Fatalf("the fork is a well-formed log on its own: %v", err)
	}
	rep, err = audit.Verify(t.Context(), dirB, b.VerifierKey(), "", w.VerifierKey())
	if !errors.Is(err, audit.ErrTampered) || len(rep.Problems) == 0 || rep.Problems[0].Kind != audit.ProblemWitness {
		t.Fatalf("verify the fork requiring the witness: %v, %+v; want a witness problem", err, rep.Problems)
	}
}

// The protocol's answers, on real HTTP: each refusal its status, and the
// state kept across a restart of the witness.
func TestWitnessProtocol(t *testing.T) {
	dir := t.TempDir()
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	_, url := startWitness(t, dir, vkey)
	root := func(seed byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{seed}, 32)) }
	checkpoint := func(s note.Signer, orig string, size int, r string) string {
		b, err := note.Sign(&note.Note{Text: fmt.Sprintf("%s\n%d\n%s\n", orig, size, r)}, s)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	post := func(url, body string) (int, string, string) {
		t.Helper()
		resp, err := http.Post(url+"/add-checkpoint", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	otherSkey, _, _ := note.GenerateKey(rand.Reader, origin)
	otherSigner, _ := note.NewSigner(otherSkey)
	strangerSkey, _, _ := note.GenerateKey(rand.Reader, "stranger")
	strangerSigner, _ := note.NewSigner(strangerSkey)
	hash := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))

	code, _, body := post(url, "old 0\n\n"+checkpoint(signer, origin, 3, root(1)))
	if code != http.StatusOK || !strings.HasPrefix(body, "— witness.test/w1 ") {
		t.Fatalf("first checkpoint: %d %q", code, body)
	}
	for _, c := range []struct {
		name, body string
		code       int
		ctype      string
		answer     string
	}{
		{"unknown log", "old 0\n\n" + checkpoint(strangerSigner, "stranger", 3, root(1)), 404, "", ""},
		{"signed by another key", "old 3\n\n" + checkpoint(otherSigner, origin, 4, root(2)), 403, "", ""},
		{"no old line", "\n" + checkpoint(signer, origin, 4, root(2)), 400, "", ""},
		{"old not a number", "old x\n\n" + checkpoint(signer, origin, 4, root(2)), 400, "", ""},
		{"old over size", "old 5\n\n" + checkpoint(signer, origin, 4, root(2)), 400, "", ""},
		{"proof line not a hash", "old 3\nnope\n\n" + checkpoint(signer, origin, 4, root(2)), 400, "", ""},
		{"stale old size", "old 1\n" + hash + "\n\n" + checkpoint(signer, origin, 4, root(2)), 409, "text/x.tlog.size", "3\n"},
		{"bad proof", "old 3\n" + hash + "\n" + hash + "\n\n" + checkpoint(signer, origin, 4, root(2)), 422, "", ""},
		{"same size, other root", "old 3\n\n" + checkpoint(signer, origin, 3, root(7)), 409, "text/plain; charset=utf-8", ""},
		{"garbage", "old 0\n\nnot a checkpoint", 404, "", ""},
	} {
		code, ctype, body := post(url, c.body)
		if code != c.code || (c.ctype != "" && ctype != c.ctype) || (c.answer != "" && body != c.answer) {
			t.Errorf("%s: %d %q %q, want %d %q %q", c.name, code, ctype, body, c.code, c.ctype, c.answer)
		}
	}
	if code, _, _ := post(url, "old 0\n\n"+strings.Repeat("x", 20<<10)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("an oversized body: %d, want 413", code)
	}
	// The same checkpoint again is co-signed again (a client retrying).
	if code, _, body := post(url, "old 3\n\n"+checkpoint(signer, origin, 3, root(1))); code != http.StatusOK {
		t.Errorf("the same checkpoint again: %d %q", code, body)
	}
	// A restarted witness remembers where the log was.
	_, url2 := startWitness(t, dir, vkey)
	if code, ctype, body := post(url2, "old 0\n\n"+checkpoint(signer, origin, 9, root(3))); code != http.StatusConflict || ctype != "text/x.tlog.size" || body != "3\n" {
		t.Errorf("after a restart, old 0: %d %q %q, want 409 with size 3", code, ctype, body)
	}
	if _, err := os.Stat(filepath.Join(dir, "witness.key")); err != nil {
		t.Error(err)
	}
}

package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/testenv"
)

// The tests run as root, so a directory's mode does not stop a write; what
// does: a path that is a file where a directory must be, and a full disk.
// (A read-only remount is not tested: tessera panics when it cannot open
// its lock file, see the report of issue 17's core.)

// appendUntil appends until an Append's outcome is the one wanted (an
// error wrapping ErrUnavailable, or success), for at most 30 s, and
// returns the indexes of those that succeeded before, with that outcome's
// error. An append that succeeds is in the journal, so it counts: the
// tree behind it may fail, and then the next appends are refused.
func appendUntil(t *testing.T, l *Log, refused bool, what string) ([]uint64, error) {
	t.Helper()
	var ok []uint64
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		idx, err := l.Append(context.Background(), testEntry(fmt.Sprintf("%s-%d", what, i)))
		switch {
		case err == nil && !refused:
			return append(ok, idx), nil
		case err == nil:
			ok = append(ok, idx)
		case !errors.Is(err, ErrUnavailable):
			t.Fatalf("%s: Append: %v, want ErrUnavailable", what, err)
		case refused:
			return ok, err
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: Append never gave the outcome wanted (refused: %v) in 30 s", what, refused)
	return nil, nil
}

// checkNoGap checks that the log, read back, holds entries 0..n-1.
func checkNoGap(t *testing.T, l *Log, n uint64) {
	t.Helper()
	recs, err := l.Entries(context.Background(), 0, int(n)+10)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(recs)) != n {
		t.Fatalf("the log holds %d entries, want %d", len(recs), n)
	}
	for i, r := range recs {
		if r.Index != uint64(i) {
			t.Fatalf("entry %d has index %d", i, r.Index)
		}
	}
}

// TestAppendFailsClosedWhenUnwritable: with the entry bundles' directory
// replaced by a file, Append fails promptly with ErrUnavailable (the one
// it was writing may still succeed: it is journaled); put back, the log
// goes on with no gap, every acknowledged entry in it.
func TestAppendFailsClosedWhenUnwritable(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "audit")
	l := openTest(t, dir, Options{})
	if _, err := l.Append(ctx, testEntry("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Size(ctx); err != nil { // in the tree
		t.Fatal(err)
	}
	entries := filepath.Join(dir, "tile", "entries")
	if err := os.Rename(entries, entries+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entries, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	acked, err := appendUntil(t, l, true, "refused")
	if len(acked) > 2 || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append to an unwritable log: %d acknowledged before %v; want at most 2, then ErrUnavailable from the storage", len(acked), err)
	}
	t.Logf("%d journaled, then refused with: %v", len(acked), err)
	os.Remove(entries)
	if err := os.Rename(entries+".away", entries); err != nil {
		t.Fatal(err)
	}
	after, _ := appendUntil(t, l, false, "after")
	if idx := after[0]; idx != uint64(1+len(acked)) {
		t.Fatalf("Append once writable again: index %d, want %d", idx, 1+len(acked))
	}
	checkNoGap(t, l, uint64(2+len(acked)))
	vkey := l.VerifierKey()
	closeTest(t, l)
	if _, err := Verify(ctx, dir, vkey, ""); err != nil {
		t.Fatal(err)
	}
}

// TestAppendFailsClosedWhenFull: on a full file system (a 1 MiB tmpfs),
// Append fails with ErrUnavailable; with room again, it goes on.
func TestAppendFailsClosedWhenFull(t *testing.T) {
	ctx := context.Background()
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		testenv.Skipf(t, "cannot mount a small tmpfs to fill (%v): the full-disk case needs CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	dir := filepath.Join(mnt, "audit")
	l := openTest(t, dir, Options{KeyPath: filepath.Join(t.TempDir(), "audit.key")})
	if _, err := l.Append(ctx, testEntry("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Size(ctx); err != nil { // in the tree
		t.Fatal(err)
	}
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling: %v", err)
			}
			break
		}
	}
	f.Close()
	acked, err := appendUntil(t, l, true, "refused")
	if len(acked) > 2 || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append to a full disk: %d acknowledged before %v; want at most 2, then ErrUnavailable from the storage", len(acked), err)
	}
	t.Logf("%d journaled, then refused with: %v", len(acked), err)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	after, _ := appendUntil(t, l, false, "after")
	if idx := after[0]; idx != uint64(1+len(acked)) {
		t.Fatalf("Append with room again: index %d, want %d", idx, 1+len(acked))
	}
	checkNoGap(t, l, uint64(2+len(acked)))
	vkey := l.VerifierKey()
	closeTest(t, l)
	if _, err := Verify(ctx, dir, vkey, ""); err != nil {
		t.Fatal(err)
	}
}

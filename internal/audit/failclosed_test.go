package audit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The tests run as root, so a directory's mode does not stop a write; what
// does: a path that is a file where a directory must be, and a full disk.
// (A read-only remount is not tested: tessera panics when it cannot open
// its lock file, see the report of issue 17's core.)

// TestAppendFailsClosedWhenUnwritable: with the entry bundles' directory
// replaced by a file, Append fails promptly with ErrUnavailable (the storage
// error, not its deadline); put back, the log goes on with no gap.
func TestAppendFailsClosedWhenUnwritable(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "audit")
	l := openTest(t, dir, Options{})
	if _, err := l.Append(ctx, testEntry("before")); err != nil {
		t.Fatal(err)
	}
	entries := filepath.Join(dir, "tile", "entries")
	if err := os.Rename(entries, entries+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entries, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := l.Append(ctx, testEntry("refused"))
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append to an unwritable log: %v, want ErrUnavailable from the storage", err)
	}
	t.Logf("refused with: %v", err)
	os.Remove(entries)
	if err := os.Rename(entries+".away", entries); err != nil {
		t.Fatal(err)
	}
	idx, err := l.Append(ctx, testEntry("after"))
	if err != nil || idx != 1 {
		t.Fatalf("Append once writable again: index %d, %v; want 1", idx, err)
	}
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
		t.Skipf("cannot mount a small tmpfs to fill (%v): the full-disk case needs CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	dir := filepath.Join(mnt, "audit")
	l := openTest(t, dir, Options{KeyPath: filepath.Join(t.TempDir(), "audit.key")})
	if _, err := l.Append(ctx, testEntry("before")); err != nil {
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
	_, err = l.Append(ctx, testEntry("refused"))
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append to a full disk: %v, want ErrUnavailable from the storage", err)
	}
	t.Logf("refused with: %v", err)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	idx, err := l.Append(ctx, testEntry("after"))
	if err != nil || idx != 1 {
		t.Fatalf("Append with room again: index %d, %v; want 1", idx, err)
	}
	vkey := l.VerifierKey()
	closeTest(t, l)
	if _, err := Verify(ctx, dir, vkey, ""); err != nil {
		t.Fatal(err)
	}
}

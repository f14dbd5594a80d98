package audit

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestJournalRecovery: Open adds to the tree what the journal holds beyond
// it, in order; skips what the tree holds (checking it is the same);
// ignores a record torn by a crash; and refuses a journal that disagrees
// with the tree or skips an index.
func TestJournalRecovery(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	dir := filepath.Join(base, "audit")
	l := openTest(t, dir, Options{})
	var data [][]byte
	for i := range 3 {
		e := testEntry("tree-" + string(rune('a'+i)))
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := l.Entries(ctx, 0, 10)
	if err != nil || len(recs) != 3 {
		t.Fatalf("entries: %d, %v", len(recs), err)
	}
	for _, r := range recs {
		data = append(data, r.Data)
	}
	vkey := l.VerifierKey()
	closeTest(t, l)

	extra := func(name string) []byte {
		b, err := testEntry(name).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	journalPath := filepath.Join(dir, ".state", journalName)
	snapshot := t.TempDir()
	if err := os.CopyFS(snapshot, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		t.Helper()
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.CopyFS(dir, os.DirFS(snapshot)); err != nil {
			t.Fatal(err)
		}
	}
	write := func(j []byte) {
		t.Helper()
		if err := os.WriteFile(journalPath, j, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// A crash left entries 3 and 4 journaled only, and 5 half written.
	var j []byte
	j = appendRecord(j, 1, data[1])
	j = appendRecord(j, 2, data[2])
	j = appendRecord(j, 3, extra("journal-3"))
	j = appendRecord(j, 4, extra("journal-4"))
	torn := appendRecord(nil, 5, extra("journal-5"))
	write(append(j, torn[:len(torn)-3]...))
	l = openTest(t, dir, Options{})
	recs, err = l.Entries(ctx, 0, 10)
	if err != nil || len(recs) != 5 {
		t.Fatalf("after recovery: %d entries, %v; want 5", len(recs), err)
	}
	if recs[3].Entry.Target.Path != "journal-3" || recs[4].Entry.Target.Path != "journal-4" {
		t.Fatalf("recovered entries: %+v, %+v", recs[3].Entry, recs[4].Entry)
	}
	if idx, err := l.Append(ctx, testEntry("next")); err != nil || idx != 5 {
		t.Fatalf("append after recovery: %d, %v; want 5", idx, err)
	}
	closeTest(t, l)
	if _, err := Verify(ctx, dir, vkey, ""); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(journalPath); err != nil || fi.Size() != 0 {
		t.Fatalf("the journal after a clean close: %v, %v; want empty", fi, err)
	}

	for _, c := range []struct {
		name, want string
		journal    []byte
	}{
		{"disagrees", "is not the one the log holds", appendRecord(nil, 1, extra("forged"))},
		{"gap", "follows a gap", appendRecord(nil, 4, extra("after a gap"))},
	} {
		restore()
		write(c.journal)
		_, err := Open(ctx, dir, Options{Origin: testOrigin})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Open: %v, want an error saying %q", c.name, err, c.want)
		}
	}
}

package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHomeServerID: a home keeps its server id across runs (a restarted
// server owns the claims its last run held), two homes differ, and an id
// file others may read is refused.
func TestHomeServerID(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	id1, err := homeServerID(a)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := homeServerID(a)
	if err != nil {
		t.Fatal(err)
	}
	other, err := homeServerID(b)
	if err != nil {
		t.Fatal(err)
	}
	if id1 == "" || id1 != id2 || id1 == other {
		t.Fatalf("ids: %q then %q on one home, %q on another; want one stable id per home", id1, id2, other)
	}
	if err := os.Chmod(filepath.Join(a, "server-id"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := homeServerID(a); err == nil {
		t.Fatal("a server-id file its group and others may read was used")
	}
}

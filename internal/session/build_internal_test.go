package session

import (
	"os"
	"path/filepath"
	"testing"
)

// Removing a version's files removes its own directory, but never the
// template's directory that a version from before version dirs keeps its
// files in, whatever the template is named (a "vue" template once lost
// its mirror and current version this way).
func TestRemoveVersionFiles(t *testing.T) {
	t.Parallel()
	tpl := filepath.Join(t.TempDir(), "vue")
	v2 := filepath.Join(tpl, "v2")
	for _, d := range []string{v2, filepath.Join(tpl, "repo.git"), filepath.Join(tpl, "v3")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	files := func(dir string) machine {
		m := machine{Disk: filepath.Join(dir, "disk.qcow2"),
			Parked: &parked{Mem: filepath.Join(dir, "mem"), State: filepath.Join(dir, "state")}}
		for _, f := range []string{m.Disk, m.Parked.Mem, m.Parked.State} {
			if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	legacy := files(tpl) // version 1, from before version dirs
	files(filepath.Join(tpl, "v3"))

	removeVersionFiles(legacy, filepath.Join(tpl, "v1"))
	for _, f := range []string{legacy.Disk, legacy.Parked.Mem, legacy.Parked.State} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s after removing version 1: %v", f, err)
		}
	}
	for _, d := range []string{filepath.Join(tpl, "repo.git"), filepath.Join(tpl, "v3", "mem")} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("removing version 1 took %s: %v", d, err)
		}
	}

	removeVersionFiles(files(v2), v2)
	if _, err := os.Stat(v2); !os.IsNotExist(err) {
		t.Errorf("version 2's directory after its removal: %v", err)
	}
}

package sqlite_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/store/storetest"
)

func open(t *testing.T, dir string) store.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "cove.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return st
}

func TestConformance(t *testing.T) {
	storetest.Run(t, open)
}

// Paths with bytes that mean something in a URI still name the file.
func TestConformanceOddPath(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string) store.Store {
		t.Helper()
		odd := filepath.Join(dir, "a dir?x=1#frag%20")
		if err := os.MkdirAll(odd, 0o700); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(odd, "co ve?.db")
		st, err := sqlite.Open(t.Context(), path)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("database file not at its path: %v", err)
		}
		return st
	})
}

// A missing directory is named in the error, not created, and not
// reported as some SQLite code.
func TestOpenMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing")
	path := filepath.Join(dir, "cove.db")
	st, err := sqlite.Open(t.Context(), path)
	if err == nil {
		st.Close()
		t.Fatal("Open in a missing directory succeeded")
	}
	t.Logf("error: %v", err)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v does not wrap fs.ErrNotExist", err)
	}
	for _, want := range []string{"sqlite: open " + path, "directory", dir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open created the directory (stat: %v)", err)
	}
}

// A path whose parent is a file, not a directory, is refused clearly.
func TestOpenDirectoryIsFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(t.Context(), filepath.Join(file, "cove.db"))
	if err == nil {
		st.Close()
		t.Fatal("Open under a file succeeded")
	}
	if !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("error %q does not say the directory is not one", err)
	}
}

// A file that is not a database is refused, and left as it was.
func TestOpenNotADatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	junk := []byte(strings.Repeat("this is not a sqlite database\n", 200))
	if err := os.WriteFile(path, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(t.Context(), path)
	if err == nil {
		st.Close()
		t.Fatal("Open of a non-database succeeded")
	}
	if !strings.HasPrefix(err.Error(), "sqlite: open "+path) {
		t.Errorf("error %q does not name the operation and path", err)
	}
	got, _ := os.ReadFile(path)
	if string(got) != string(junk) {
		t.Error("Open changed the file it refused")
	}
}

// The database and its WAL are readable by their owner only: they hold
// session environments, which may carry secrets.
func TestFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cove.db")
	st, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer st.Close()
	if err := st.CreateSession(t.Context(), &store.Session{ID: "x", CreatedAt: time.Now()}); err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Errorf("stat: %v", err)
			continue
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s mode = %v, want 0600", filepath.Base(p), perm)
		}
	}
}

// Times that unix nanoseconds cannot hold fail the write and store nothing.
func TestTimeOutOfRange(t *testing.T) {
	st := open(t, t.TempDir())
	defer st.Close()
	far := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	err := st.CreateSession(t.Context(), &store.Session{ID: "far", CreatedAt: far})
	if err == nil || !strings.Contains(err.Error(), "created_at") {
		t.Errorf("CreateSession(year 3000) = %v, want a created_at error", err)
	}
	if _, err := st.GetSession(t.Context(), "far"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetSession after failed create = %v, want ErrNotFound", err)
	}
	err = st.PutImage(t.Context(), store.Image{Name: "old", CreatedAt: time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err == nil {
		t.Error("PutImage(year 1600) succeeded")
	}
	err = st.CreateTemplate(t.Context(), &store.Template{Name: "far", UpdatedAt: far})
	if err == nil || !strings.Contains(err.Error(), "updated_at") {
		t.Errorf("CreateTemplate(year 3000) = %v, want an updated_at error", err)
	}
	if _, err := st.GetTemplate(t.Context(), "far"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetTemplate after failed create = %v, want ErrNotFound", err)
	}
	if err := st.CreateTemplate(t.Context(), &store.Template{Name: "near"}); err != nil {
		t.Fatalf("CreateTemplate: %v", err)
	}
	err = st.UpdateTemplate(t.Context(), &store.Template{Name: "near", State: "x", CreatedAt: far})
	if err == nil || !strings.Contains(err.Error(), "created_at") {
		t.Errorf("UpdateTemplate(year 3000) = %v, want a created_at error", err)
	}
	if got, err := st.GetTemplate(t.Context(), "near"); err != nil || got.State != "" {
		t.Errorf("GetTemplate after failed update = %+v, %v; want it unchanged", got, err)
	}

	// The edges of the range are fine.
	for i, tm := range []time.Time{time.Unix(0, -1<<63), time.Unix(0, 1<<63-1), time.Unix(0, 0)} {
		id := string(rune('a' + i))
		if err := st.CreateSession(t.Context(), &store.Session{ID: id, CreatedAt: tm}); err != nil {
			t.Fatalf("CreateSession(%v): %v", tm, err)
		}
		got, err := st.GetSession(t.Context(), id)
		if err != nil {
			t.Fatalf("GetSession: %v", err)
		}
		if !got.CreatedAt.Equal(tm) || got.CreatedAt.IsZero() {
			t.Errorf("CreatedAt = %v, want %v", got.CreatedAt, tm)
		}
	}
}

// Env values and setup commands that are not UTF-8 would be mangled by
// JSON, so they are refused rather than stored changed.
func TestEnvNotUTF8(t *testing.T) {
	st := open(t, t.TempDir())
	defer st.Close()
	err := st.CreateSession(t.Context(), &store.Session{ID: "x", Env: map[string]string{"K": "\xff"}})
	if err == nil {
		t.Fatal("CreateSession with a non-UTF-8 env value succeeded")
	}
	if _, err := st.GetSession(t.Context(), "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetSession after failed create = %v, want ErrNotFound", err)
	}

	for _, tm := range []store.Template{
		{Name: "env", Env: map[string]string{"K": "\xff"}},
		{Name: "setup", Setup: []string{"true", "echo \xff"}},
	} {
		err := st.CreateTemplate(t.Context(), &tm)
		if err == nil || !strings.Contains(err.Error(), tm.Name+": "+tm.Name) {
			t.Errorf("CreateTemplate(%s not UTF-8) = %v, want an error naming %s", tm.Name, err, tm.Name)
		}
		if _, err := st.GetTemplate(t.Context(), tm.Name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetTemplate after failed create = %v, want ErrNotFound", err)
		}
	}
}

// Errors name the operation and the record.
func TestErrorsNameOperation(t *testing.T) {
	st := open(t, t.TempDir())
	defer st.Close()
	_, err := st.GetSession(t.Context(), "s-42")
	if got, want := err.Error(), "sqlite: get session s-42: store: not found"; got != want {
		t.Errorf("GetSession error = %q, want %q", got, want)
	}
	err = st.DeleteImage(t.Context(), "tiny")
	if got, want := err.Error(), "sqlite: delete image tiny: store: not found"; got != want {
		t.Errorf("DeleteImage error = %q, want %q", got, want)
	}
	_, err = st.GetTemplate(t.Context(), "py")
	if got, want := err.Error(), "sqlite: get template py: store: not found"; got != want {
		t.Errorf("GetTemplate error = %q, want %q", got, want)
	}
	err = st.UpdateTemplate(t.Context(), &store.Template{Name: "py"})
	if got, want := err.Error(), "sqlite: update template py: store: not found"; got != want {
		t.Errorf("UpdateTemplate error = %q, want %q", got, want)
	}
	if err := st.CreateTemplate(t.Context(), &store.Template{Name: "py"}); err != nil {
		t.Fatal(err)
	}
	err = st.CreateTemplate(t.Context(), &store.Template{Name: "py"})
	if got, want := err.Error(), "sqlite: create template py: store: already exists"; got != want {
		t.Errorf("CreateTemplate error = %q, want %q", got, want)
	}
	err = st.DeleteTemplate(t.Context(), "nope")
	if got, want := err.Error(), "sqlite: delete template nope: store: not found"; got != want {
		t.Errorf("DeleteTemplate error = %q, want %q", got, want)
	}
}

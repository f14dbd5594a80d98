// Package objstoretest is the conformance suite every objstore.Store
// implementation passes: the contract of objstore.Store, as tests.
package objstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"

	"github.com/cove-dev/cove/internal/objstore"
)

// Run runs the suite; open returns an empty store for each test.
func Run(t *testing.T, open func(t *testing.T) objstore.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, objstore.Store)
	}{
		{"PutGetStat", testPutGetStat},
		{"NotFound", testNotFound},
		{"Overwrite", testOverwrite},
		{"Delete", testDelete},
		{"List", testList},
		{"ConcurrentWritersOfOneKey", testConcurrentWriters},
		{"ShortReaderStoresNothing", testShortReader},
		{"FailedOverwriteKeepsOld", testFailedOverwrite},
		{"BadKeys", testBadKeys},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

func put(t *testing.T, s objstore.Store, key string, b []byte) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func get(t *testing.T, s objstore.Store, key string) []byte {
	t.Helper()
	r, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

func testPutGetStat(t *testing.T, s objstore.Store) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("cove"), 50000)
	put(t, s, "a/b/c", data)
	put(t, s, "empty", nil)
	if got := get(t, s, "a/b/c"); !bytes.Equal(got, data) {
		t.Fatalf("get: %d bytes, want the %d put", len(got), len(data))
	}
	if got := get(t, s, "empty"); len(got) != 0 {
		t.Fatalf("get empty: %d bytes", len(got))
	}
	info, err := s.Stat(ctx, "a/b/c")
	if err != nil {
		t.Fatal(err)
	}
	if info.Key != "a/b/c" || info.Size != int64(len(data)) || info.ModTime.IsZero() {
		t.Fatalf("stat: %+v, want key a/b/c, size %d and a modification time", info, len(data))
	}
}

func testNotFound(t *testing.T, s objstore.Store) {
	ctx := context.Background()
	if _, err := s.Get(ctx, "no/such/key"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("get of a missing key: %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "no/such/key"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("stat of a missing key: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "no/such/key"); err != nil {
		t.Errorf("delete of a missing key: %v, want nil", err)
	}
}

func testOverwrite(t *testing.T, s objstore.Store) {
	put(t, s, "k", []byte("first version, longer"))
	put(t, s, "k", []byte("second"))
	if got := get(t, s, "k"); string(got) != "second" {
		t.Fatalf("after overwrite: %q", got)
	}
}

func testDelete(t *testing.T, s objstore.Store) {
	ctx := context.Background()
	put(t, s, "d/x", []byte("x"))
	if err := s.Delete(ctx, "d/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "d/x"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("stat after delete: %v, want ErrNotFound", err)
	}
}

func list(t *testing.T, s objstore.Store, prefix string) []string {
	t.Helper()
	var keys []string
	err := s.List(context.Background(), prefix, func(i objstore.Info) error {
		if i.ModTime.IsZero() {
			t.Errorf("list %q: %s has no modification time", prefix, i.Key)
		}
		keys = append(keys, i.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	slices.Sort(keys)
	return keys
}

func testList(t *testing.T, s objstore.Store) {
	for _, k := range []string{"chunks/ab/ab01", "chunks/ab/ab02", "chunks/cd/cd01", "chunksx", "manifests/m1"} {
		put(t, s, k, []byte(k))
	}
	for prefix, want := range map[string][]string{
		"":           {"chunks/ab/ab01", "chunks/ab/ab02", "chunks/cd/cd01", "chunksx", "manifests/m1"},
		"chunks/":    {"chunks/ab/ab01", "chunks/ab/ab02", "chunks/cd/cd01"},
		"chunks/a":   {"chunks/ab/ab01", "chunks/ab/ab02"},
		"chunks/ab/": {"chunks/ab/ab01", "chunks/ab/ab02"},
		"chunks":     {"chunks/ab/ab01", "chunks/ab/ab02", "chunks/cd/cd01", "chunksx"},
		"manifests/": {"manifests/m1"},
		"none/":      nil,
	} {
		if got := list(t, s, prefix); !slices.Equal(got, want) {
			t.Errorf("list %q = %q, want %q", prefix, got, want)
		}
	}
	stop := errors.New("stop")
	n := 0
	err := s.List(context.Background(), "", func(objstore.Info) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("list whose callback fails: err %v after %d calls, want the callback's error after 1", err, n)
	}
}

// Writers racing on one key each install a whole object: a reader sees one
// of the versions, never a mix or a part.
func testConcurrentWriters(t *testing.T, s objstore.Store) {
	const writers = 8
	var versions [][]byte
	for i := range writers {
		versions = append(versions, bytes.Repeat([]byte{byte('a' + i)}, 256<<10+i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for _, v := range versions {
		wg.Go(func() {
			if err := s.Put(context.Background(), "race/key", bytes.NewReader(v), int64(len(v))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent put: %v", err)
	}
	got := get(t, s, "race/key")
	if !slices.ContainsFunc(versions, func(v []byte) bool { return bytes.Equal(v, got) }) {
		t.Fatalf("after concurrent puts: %d bytes that are none of the versions written", len(got))
	}
	if keys := list(t, s, "race/"); !slices.Equal(keys, []string{"race/key"}) {
		t.Fatalf("after concurrent puts, list shows %q, want only race/key (no temporary files)", keys)
	}
}

// A Put whose reader ends early fails and leaves no object.
func testShortReader(t *testing.T, s objstore.Store) {
	ctx := context.Background()
	err := s.Put(ctx, "short", io.MultiReader(bytes.NewReader([]byte("abc")), errReader{}), 100)
	if err == nil {
		t.Fatal("put from a failing reader succeeded")
	}
	if _, err := s.Stat(ctx, "short"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("stat after a failed put: %v, want ErrNotFound", err)
	}
}

// A Put that fails over an existing object leaves that object whole: the
// new one is installed at once or not at all.
func testFailedOverwrite(t *testing.T, s objstore.Store) {
	old := bytes.Repeat([]byte("old"), 1000)
	put(t, s, "k", old)
	err := s.Put(context.Background(), "k", io.MultiReader(bytes.NewReader([]byte("new")), errReader{}), 3000)
	if err == nil {
		t.Fatal("put from a failing reader succeeded")
	}
	if got := get(t, s, "k"); !bytes.Equal(got, old) {
		t.Fatalf("after a failed overwrite: %d bytes, want the old %d", len(got), len(old))
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, fmt.Errorf("reader broke") }

func testBadKeys(t *testing.T, s objstore.Store) {
	for _, k := range []string{"", "/abs", "a//b", "a/../b", "../x", "a/.tmp-x", "trailing/"} {
		if err := s.Put(context.Background(), k, bytes.NewReader(nil), 0); err == nil {
			t.Errorf("put %q: accepted, want an error", k)
		}
	}
}

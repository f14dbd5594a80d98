package agent_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
)

// watchUntil reads w's events until want(name, op) has been seen for
// every pair, and returns all it read. The guest's events come within
// the test's deadline or the test fails.
func watchUntil(t *testing.T, w *agentproto.Watch, want ...string) []agentproto.WatchEvent {
	t.Helper()
	missing := map[string]bool{}
	for _, k := range want {
		missing[k] = true
	}
	var all []agentproto.WatchEvent
	got := make(chan []agentproto.WatchEvent)
	errc := make(chan error, 1)
	for len(missing) > 0 {
		go func() {
			evs, err := w.Next()
			if err != nil {
				errc <- err
				return
			}
			got <- evs
		}()
		select {
		case evs := <-got:
			for _, ev := range evs {
				all = append(all, ev)
				delete(missing, ev.Op+" "+ev.Name)
			}
		case err := <-errc:
			t.Fatalf("watch ended (%v) before %v; got %s", err, missing, summary(all))
		case <-time.After(20 * time.Second):
			t.Fatalf("no %v within 20s; got %s", missing, summary(all))
		}
	}
	return all
}

// summary is evs, or their count and last few when there are many.
func summary(evs []agentproto.WatchEvent) string {
	if len(evs) <= 20 {
		return fmt.Sprint(evs)
	}
	return fmt.Sprintf("%d events, the last %v", len(evs), evs[len(evs)-5:])
}

func TestWatchDirectory(t *testing.T) {
	c := connect(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub", "deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	flat, err := c.Watch(ctxT(t), dir, false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer flat.Close()
	deep, err := c.Watch(ctxT(t), dir, true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer deep.Close()

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "a.txt"), []byte("one"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "sub", "deep", "b.txt"), []byte("two"), 0o644))
	must(os.Chmod(filepath.Join(dir, "a.txt"), 0o600))
	must(os.Rename(filepath.Join(dir, "a.txt"), filepath.Join(dir, "c.txt")))
	must(os.Mkdir(filepath.Join(dir, "later"), 0o755))
	must(os.Remove(filepath.Join(dir, "c.txt")))

	evs := watchUntil(t, flat, "create a.txt", "write a.txt", "chmod a.txt", "rename a.txt", "create c.txt", "create later", "remove c.txt")
	for _, ev := range evs {
		if ev.Name == "sub/deep/b.txt" {
			t.Errorf("a watch that is not recursive reported %v", ev)
		}
		if ev.Op == agentproto.WatchCreate && ev.Name == "later" && (ev.Info == nil || ev.Info.Name != "later" || !ev.Info.IsDir) {
			t.Errorf("create later with entries asked for: info %+v", ev.Info)
		}
	}
	watchUntil(t, deep, "create a.txt", "create sub/deep/b.txt", "write sub/deep/b.txt", "create later")
	// A directory made after the start is watched too.
	must(os.WriteFile(filepath.Join(dir, "later", "d.txt"), []byte("four"), 0o644))
	watchUntil(t, deep, "create later/d.txt")

	// The watched directory's removal ends the watch: its stream ends.
	must(os.RemoveAll(dir))
	for {
		_, err := deep.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after the directory's removal: %v, want io.EOF", err)
		}
	}
}

func TestWatchBadInput(t *testing.T) {
	c := connect(t)
	dir := t.TempDir()
	_, err := c.Watch(ctxT(t), filepath.Join(dir, "nope"), false, false)
	wantCode(t, err, agentproto.CodeNotFound)
	f := filepath.Join(dir, "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = c.Watch(ctxT(t), f, false, false)
	wantCode(t, err, agentproto.CodeInvalid)
	_, err = c.Watch(ctxT(t), "relative", false, false)
	wantCode(t, err, agentproto.CodeInvalid)
}

// A directory changed faster than the host reads its events costs the
// guest a bounded queue: what does not fit is dropped, and an overflow
// event says so.
func TestWatchOverflow(t *testing.T) {
	c := connect(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w, err := c.Watch(ctx, dir, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// Long names: more than the stream's window (4 MiB) and the queue
	// hold together.
	const files = 30000
	long := strings.Repeat("x", 240)
	for i := range files {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(long, i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	evs := watchUntil(t, w, agentproto.WatchOverflow+" ")
	if len(evs) >= files {
		t.Fatalf("%d events for %d files and an overflow notice: want fewer events", len(evs), files)
	}
	// Once the host caught up, events flow again.
	if err := os.Mkdir(filepath.Join(dir, "last"), 0o755); err != nil {
		t.Fatal(err)
	}
	watchUntil(t, w, "create last")
}

// The agent writes a file through a temporary one renamed over it; a
// watcher sees what a write in place shows: the file's create (if new)
// and its write, and nothing of the temporary file.
func TestWatchAgentWrites(t *testing.T) {
	c := connect(t)
	dir := t.TempDir()
	w, err := c.Watch(ctxT(t), dir, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	f := filepath.Join(dir, "f.txt")
	if err := c.Write(ctxT(t), f, 0o644, strings.NewReader("one")); err != nil {
		t.Fatal(err)
	}
	evs := watchUntil(t, w, "create f.txt", "write f.txt")
	if err := c.Write(ctxT(t), f, 0o644, strings.NewReader("two")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mark"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	evs = append(evs, watchUntil(t, w, "create mark")...)
	var got []string
	for _, ev := range evs {
		if ev.Name != "mark" {
			got = append(got, ev.Op+" "+ev.Name)
		}
	}
	if want := []string{"create f.txt", "write f.txt", "write f.txt"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %q, want %q", got, want)
	}
}

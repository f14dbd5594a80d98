package main_test

// The node cache (issue 18, --cache-size): through a real server, real
// VMs and the default file:// object store.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// localBytes is what session id's snapshot files take on the host, as
// the node cache counts them: allocated blocks of the RAM file, the
// device state and the disk overlay.
func (e *e2e) localBytes(id string) int64 {
	e.t.Helper()
	var n int64
	for _, f := range []string{"mem", "state", "disk.qcow2"} {
		var st syscall.Stat_t
		err := syscall.Stat(filepath.Join(e.home, "sessions", id, f), &st)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			e.t.Fatal(err)
		default:
			n += st.Blocks * 512
		}
	}
	return n
}

// waitEvicted waits, through 'cove session inspect', until session id
// says evicted.
func (e *e2e) waitEvicted(id string) {
	e.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for !e.inspect(id).Evicted {
		if time.Now().After(deadline) {
			e.t.Fatalf("session %s not evicted after 3 minutes%s", id, e.serverLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestObjectsCacheEvicts: with --cache-size (here COVE_CACHE_SIZE) under
// what parked sessions take, the server evicts the files of the stored
// ones, least recently parked first: at start, and after a park's upload.
// The newest stays; the files left never exceed the bound; each eviction
// is in the log, in inspect and in /metrics; an evicted session wakes
// from the object store with its memory and background process intact.
func TestObjectsCacheEvicts(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()
	var ss [3]memorySession
	for i := range ss {
		ss[i] = e.newMemorySession("--memory", "256")
	}
	for _, s := range ss[:2] {
		e.ok(nil, "park", s.id)
		e.waitStored(s.id)
	}
	b0, b1 := e.localBytes(ss[0].id), e.localBytes(ss[1].id)
	t.Logf("parked and stored: %d and %d bytes on the host", b0, b1)
	if b0 <= 0 || b1 <= 0 {
		t.Fatalf("parked sessions take %d and %d bytes", b0, b1)
	}
	if err := e.stopServer(syscall.SIGTERM); err != nil {
		t.Fatalf("server stop: %v", err)
	}

	// Room for the second and half the first: the first goes at start.
	limit := b1 + b0/2
	e.startServer(fmt.Sprintf("COVE_CACHE_SIZE=%d", limit))
	e.waitEvicted(ss[0].id)
	if n := e.localBytes(ss[0].id); n != 0 {
		t.Errorf("session %s evicted, but %d bytes of its snapshot are on the host", ss[0].id, n)
	}
	if got := e.inspect(ss[1].id); got.Evicted || e.localBytes(ss[1].id) != b1 {
		t.Errorf("session %s (the newest parked) evicted at start: %+v", ss[1].id, got)
	}
	if log := e.srv.log.String(); !strings.Contains(log, "node cache: evicted") || !strings.Contains(log, "session="+ss[0].id) {
		t.Errorf("the server's log does not tell the eviction of %s:%s", ss[0].id, e.serverLog())
	}

	// The third's park and upload push the second out.
	e.ok(nil, "park", ss[2].id)
	e.waitStored(ss[2].id)
	e.waitEvicted(ss[1].id)
	b2 := e.localBytes(ss[2].id)
	if got := e.inspect(ss[2].id); got.Evicted || b2 == 0 {
		t.Errorf("session %s, parked last, evicted: %+v", ss[2].id, got)
	}
	var total int64
	for _, s := range ss {
		total += e.localBytes(s.id)
	}
	t.Logf("bound %d bytes; left on the host: %d (the third: %d)", limit, total, b2)
	if total > limit {
		t.Errorf("parked sessions take %d bytes on the host, over the bound %d", total, limit)
	}
	got := e.metrics()
	if got["cove_cache_evictions_total"] != 2 || got["cove_cache_evicted_bytes_total"] != float64(b0+b1) ||
		got["cove_cache_size_bytes"] != float64(limit) || got["cove_cache_bytes"] != float64(total) {
		t.Errorf("cache metrics: evictions %v, evicted bytes %v, bytes %v, size %v; want 2, %d, %d, %d",
			got["cove_cache_evictions_total"], got["cove_cache_evicted_bytes_total"], got["cove_cache_bytes"],
			got["cove_cache_size_bytes"], b0+b1, total, limit)
	}

	// Evicted sessions wake from the store (an exec wakes them) as they were.
	e.checkMemory(ss[0], "its eviction at start and a wake from the object store")
	e.checkMemory(ss[1], "its eviction after another's upload and a wake from the object store")
	if log := e.srv.log.String(); strings.Count(log, "snapshot restored from the object store") != 2 {
		t.Errorf("the server's log does not tell both restores:%s", e.serverLog())
	}
	e.checkMemory(ss[2], "staying in the cache")
	for _, s := range ss {
		e.ok(nil, "rm", s.id)
	}
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Fatalf("server stop: %v", err)
	}
}

// TestObjectsCacheEvictsClone: with a bound of one byte, a clone of a
// template is evicted as soon as it is stored; its wake fetches only the
// chunks that its template version's files on the host lack (the log's
// restore line: most chunks from the seed), with memory and background
// process intact.
func TestObjectsCacheEvictsClone(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer("COVE_CACHE_SIZE=1")
	e.ok(nil, "template", "create", "cached", "--memory", "256")
	s := e.newMemorySession("--template", "cached")
	e.ok(nil, "park", s.id)
	e.waitStored(s.id)
	e.waitEvicted(s.id)
	if n := e.localBytes(s.id); n != 0 {
		t.Fatalf("clone %s evicted, but %d bytes of its snapshot are on the host", s.id, n)
	}
	e.checkMemory(s, "its eviction and a wake seeded by its template version's files")
	var fetched, seeded int
	for l := range strings.SplitSeq(e.srv.log.String(), "\n") {
		if strings.Contains(l, "snapshot restored from the object store") && strings.Contains(l, "session="+s.id) {
			if _, err := fmt.Sscanf(l[strings.Index(l, "chunks_fetched="):], "chunks_fetched=%d", &fetched); err != nil {
				t.Fatalf("restore line %q: %v", l, err)
			}
			if _, err := fmt.Sscanf(l[strings.Index(l, "chunks_from_seeds="):], "chunks_from_seeds=%d", &seeded); err != nil {
				t.Fatalf("restore line %q: %v", l, err)
			}
		}
	}
	t.Logf("restore of the evicted clone: %d chunks fetched, %d from its template version's files", fetched, seeded)
	if seeded == 0 || fetched >= seeded {
		t.Errorf("the evicted clone's restore fetched %d chunks and took %d from the template version's files; want most from the files%s",
			fetched, seeded, e.serverLog())
	}
	e.ok(nil, "rm", s.id)
	if err := e.stopServer(syscall.SIGTERM); err != nil { // it stops its spare QEMUs
		t.Fatalf("server stop: %v", err)
	}
}

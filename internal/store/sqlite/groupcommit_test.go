package sqlite

import (
	"context"
	"strings"
	"testing"
	"time"
)

func newWrite(ctx context.Context) *eventWrite {
	return &eventWrite{ctx: ctx, lead: make(chan struct{}), done: make(chan struct{})}
}

// waitGroupCommit waits up to 10 s for cond, checked under g's lock, and
// fails the test with msg if it never holds.
func waitGroupCommit(t *testing.T, g *groupCommit, msg string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		g.mu.Lock()
		ok := cond()
		g.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
	}
}

// A batch that panics still answers its writes and passes the lead on: the
// write queued behind it runs, and later writes are not left waiting.
func TestGroupCommitSurvivesPanic(t *testing.T) {
	var g groupCommit
	ctx := t.Context()
	release := make(chan struct{})
	first, second := newWrite(ctx), newWrite(ctx)

	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		g.run(ctx, first, func(context.Context, []*eventWrite) {
			<-release
			panic("boom")
		})
	}()
	// Queue the second write while the first batch is being written.
	waitGroupCommit(t, &g, "the first write never started its batch", func() bool { return g.leading })
	secondDone := make(chan []*eventWrite, 1)
	go g.run(ctx, second, func(_ context.Context, batch []*eventWrite) { secondDone <- batch })
	waitGroupCommit(t, &g, "the second write was never queued", func() bool { return len(g.queue) == 1 })
	close(release)

	select {
	case p := <-panicked:
		if p != "boom" {
			t.Fatalf("the leader's panic = %v, want it passed on", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the panicking batch never returned")
	}
	if first.err == nil || !strings.Contains(first.err.Error(), "panic") {
		t.Fatalf("the write in the panicking batch: err = %v, want a panic error", first.err)
	}
	select {
	case batch := <-secondDone:
		if len(batch) != 1 || batch[0] != second {
			t.Fatalf("the next batch held %d writes, want the second write alone", len(batch))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write queued behind a panicking batch never ran")
	}
	<-second.done

	// Nothing is left leading: a later write runs its own batch at once.
	third := newWrite(ctx)
	ran := false
	g.run(ctx, third, func(_ context.Context, batch []*eventWrite) { ran = len(batch) == 1 && batch[0] == third })
	if !ran {
		t.Fatal("a later write did not run its own batch")
	}
}

package agent_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/agent"
)

// TestWaitEventInOrder checks events come out oldest first, once each,
// and that a waiter blocks until an event arrives.
func TestWaitEventInOrder(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"0002-b.json", "0001-a.json"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	for _, want := range []string{"0001-a.json", "0002-b.json"} {
		got, err := agent.WaitEvent(ctx, dir)
		if err != nil || string(got) != want {
			t.Fatalf("WaitEvent = %q, %v; want %q", got, err, want)
		}
	}
	done := make(chan string, 1)
	go func() {
		b, err := agent.WaitEvent(ctx, dir)
		if err != nil {
			done <- "error: " + err.Error()
			return
		}
		done <- string(b)
	}()
	select {
	case got := <-done:
		t.Fatalf("WaitEvent returned %q with no event pending", got)
	case <-time.After(200 * time.Millisecond):
	}
	// Written the way the host writes: a dot-file renamed into place.
	tmp := filepath.Join(dir, ".0003-c.json")
	if err := os.WriteFile(tmp, []byte("c"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "0003-c.json")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if got != "c" {
			t.Fatalf("got %q, want c", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitEvent did not see the new event")
	}
}

// TestWaitEventTimeout checks the wait ends with ErrNoEvent at its deadline.
func TestWaitEventTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := agent.WaitEvent(ctx, t.TempDir())
	if !errors.Is(err, agent.ErrNoEvent) {
		t.Fatalf("err = %v, want ErrNoEvent", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("timeout took %s", d)
	}
}

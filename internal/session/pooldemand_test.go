package session

import (
	"testing"
	"time"
)

// A pool's size follows the peak of creates under way at once over its
// window, at least 1 while any came, 0 once none came for a window; never
// above the template's size; the template's size in its first window.
func TestPoolDemandSize(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := 10 * time.Minute
	d := poolDemand{since: t0}
	if got := d.size(t0.Add(time.Minute), w, 4); got != 4 {
		t.Errorf("in the first window: %d, want the template's 4", got)
	}
	if got := d.size(t0.Add(w+time.Second), w, 4); got != 0 {
		t.Errorf("unused for a window: %d, want 0", got)
	}
	at := t0.Add(20 * time.Minute)
	d.start(at)
	d.done()
	if got := d.size(at.Add(time.Second), w, 4); got != 1 {
		t.Errorf("after one create: %d, want 1", got)
	}
	for range 6 { // six at once
		d.start(at.Add(time.Minute))
	}
	if got := d.size(at.Add(2*time.Minute), w, 4); got != 4 {
		t.Errorf("six at once, size 4: %d, want 4 (the cap)", got)
	}
	if got := d.size(at.Add(2*time.Minute), w, 64); got != 6 {
		t.Errorf("six at once, size 64: %d, want 6", got)
	}
	for range 6 {
		d.done()
	}
	if got := d.size(at.Add(w+2*time.Minute), w, 64); got != 0 {
		t.Errorf("a window after the last create: %d, want 0", got)
	}
}

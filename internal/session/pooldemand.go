package session

import (
	"time"
)

// poolDemand is the recent demand for a template on this node: the
// creates from it placed here. A node's pool of the template keeps the
// peak number of those creates under way at once over the last window
// (at least 1 while any came, 0 once none came for a whole window),
// never more than the template's configured size. For its first window
// a pool has no history to go by, and keeps the configured size.
type poolDemand struct {
	since   time.Time // when the pool started
	running int       // creates from the template under way here
	// peaks holds, for each create's start in the window, how many were
	// under way then (itself included), oldest first.
	peaks []demandPeak
}

type demandPeak struct {
	at time.Time
	n  int
}

// start counts a create from the template beginning at now, done one
// ending. Callers hold Manager.mu.
func (d *poolDemand) start(now time.Time) {
	d.running++
	d.peaks = append(d.peaks, demandPeak{at: now, n: d.running})
}

func (d *poolDemand) done() { d.running-- }

// size is how many ready clones the pool keeps at now: the demand of the
// last window, capped at size (the template's configured pool).
func (d *poolDemand) size(now time.Time, window time.Duration, size int) int {
	if now.Sub(d.since) < window {
		return size
	}
	cut := 0
	for cut < len(d.peaks) && now.Sub(d.peaks[cut].at) > window {
		cut++
	}
	d.peaks = d.peaks[cut:]
	want := d.running
	for _, p := range d.peaks {
		want = max(want, p.n)
	}
	return min(want, size)
}

package session

import (
	"context"
	"sync"

	"github.com/cove-dev/cove/internal/placement"
	"github.com/cove-dev/cove/internal/store"
)

// Placement is atomic against the store (issue 19: a burst of creates
// through several servers overcommits no node).
//
// Placement reads what each node's sessions hold from the store, and the
// new session's record comes later (after its boot starts, or after its
// clone is restored): two creates placed at once would each see room
// for one more and both take the last slot. Only a node's own server
// records a new session on it (a create placed on another server's node
// is forwarded there and placed again, on that node alone; a woken
// session moves only to the waking server's node), so a lock of this
// server's closes the gap: while placing, this server's node counts
// what the store says plus the room reserved by placements not yet
// recorded, and a placement on it reserves the session's room until its
// record is written (record), under the same lock, so that no placement
// sees the session twice (reserved and recorded) or not at all.

// placing is this server's placements on its own node not yet recorded.
type placing struct {
	mu       sync.Mutex
	reserved placement.Resources // guarded by mu
}

// reservation is the room one placement on this server's node set aside
// until its session is recorded or given up. A nil one (a placement
// without a node registry) holds nothing.
type reservation struct {
	m    *Manager
	res  placement.Resources
	once sync.Once
}

// reserve sets aside res on this server's node; the caller holds
// m.placing.mu.
func (m *Manager) reserve(res placement.Resources) *reservation {
	m.placing.reserved.MemoryMiB += res.MemoryMiB
	m.placing.reserved.VCPUs += res.VCPUs
	m.placing.reserved.DiskBytes += res.DiskBytes
	return &reservation{m: m, res: res}
}

// drop gives the room back; the caller holds m.placing.mu.
func (r *reservation) drop() {
	r.once.Do(func() {
		p := &r.m.placing
		p.reserved.MemoryMiB -= r.res.MemoryMiB
		p.reserved.VCPUs -= r.res.VCPUs
		p.reserved.DiskBytes -= r.res.DiskBytes
	})
}

// release gives the room back, if record did not: deferred by each
// placement's caller.
func (r *reservation) release() {
	if r == nil {
		return
	}
	r.m.placing.mu.Lock()
	defer r.m.placing.mu.Unlock()
	r.drop()
}

// record writes rec, the new session placed with r, and ends r, under
// the placement lock: from then on the store counts the session.
func (m *Manager) record(ctx context.Context, rec *store.Session, r *reservation) error {
	if r == nil {
		return m.cfg.Store.CreateSession(ctx, rec)
	}
	m.placing.mu.Lock()
	defer m.placing.mu.Unlock()
	if err := m.cfg.Store.CreateSession(ctx, rec); err != nil {
		return err
	}
	r.drop()
	return nil
}

package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// Node loss (issue 19).
//
// A node marked dead (node.go's sweeper) holds sessions in two kinds:
//   - Parked ones keep their snapshot in its files and, once stored, in
//     the object store: a wake through any server whose node takes VMs
//     moves the session there (Session.Node) and restores the stored
//     snapshot (wakeHere, then fetchSnapshot). One never stored cannot
//     wake elsewhere, and says so.
//   - Running ones (and those mid-create, -park or -wake) are lost: their
//     VM ran on the dead node. The sweeper records them StateLost with the
//     reason and the time of their last stored snapshot. Nothing brings
//     one back silently: WakeFromLastSnapshot (cove wake
//     --from-last-snapshot) restores that snapshot here, which drops the
//     work done since, as asked; a session that never had one stored can
//     only be removed.
//
// The last stored snapshot of a running session is kept for that: a wake
// of a stored snapshot records it in machine.LastStored (its manifest,
// and the parked machine that goes with it) rather than forgetting it,
// and GC keeps it live (liveManifests).
//
// Fencing: a node that comes back (a partition healed, a server
// restarted) must not run a session another node took over. A restart
// does not adopt lost sessions (their VMs are swept as orphans), and a
// live node checks at each heartbeat that the sessions it runs are still
// recorded its and not lost (fence), and stops the VMs of the others. A
// node cut off from the store cannot tell a partition from a store
// outage: once it has gone Config.FenceAfter without a heartbeat, less
// than the grace after which a sweeper may take it for dead, it freezes
// its VMs, and thaws those still its own at its next heartbeat, after
// the fence (fence.go). A session woken elsewhere from its last snapshot
// therefore never runs while its old VM does. Without FenceAfter (a
// store no other node shares) or a driver that can freeze, the old VM
// runs until that next heartbeat.

// lastStored is a session's last stored snapshot, kept after the wake
// that consumed it (machine.LastStored).
type lastStored struct {
	Manifest string `json:"manifest"`
	Bytes    int64  `json:"bytes"`
	// Machine is the parked machine that the snapshot restores.
	Machine json.RawMessage `json:"machine"`
	// At is when the snapshot was taken (its park).
	At time.Time `json:"at"`
}

// keepStored records in mach, the machine a wake of parked record rec
// runs, the snapshot the wake consumes if it was stored, as the last
// stored one; one not stored leaves the earlier record.
func keepStored(rec store.Session, parkedMach machine, mach *machine) {
	if rec.StoredManifest == "" || parkedMach.Parked == nil {
		return
	}
	pm := parkedMach
	pm.LastStored = nil
	mach.LastStored = &lastStored{Manifest: rec.StoredManifest, Bytes: rec.StoredBytes, Machine: pm.encode(), At: pm.Parked.CreatedAt}
}

// holdsElsewhere says whether session state s is one whose VM runs, or
// is being made, saved or restored, on its node: what a node loss loses.
func holdsElsewhere(s string) bool {
	switch s {
	case api.StateRunning, api.StateCreating, api.StateParking, api.StateWaking:
		return true
	}
	return false
}

// loseSessions records lost every session of dead node n whose VM was on
// it, with the reason and its last stored snapshot's time.
func (m *Manager) loseSessions(ctx context.Context, n store.Node, last time.Time) {
	recs, err := m.cfg.Store.ListSessions(ctx)
	if err != nil {
		m.cfg.Log.Warn("node sweep: list the dead node's sessions", "node", n.ID, "err", err)
		return
	}
	for _, rec := range recs {
		if rec.Node != n.ID || !holdsElsewhere(rec.State) {
			continue
		}
		m.loseSession(ctx, rec.ID, n, last)
	}
}

func (m *Manager) loseSession(ctx context.Context, id string, n store.Node, last time.Time) {
	unlock := m.lock(id)
	defer unlock()
	for range 3 {
		rec, err := m.cfg.Store.GetSession(ctx, id)
		if err != nil || rec.Node != n.ID || !holdsElsewhere(rec.State) {
			return
		}
		msg := fmt.Sprintf("node %s (%s) lost: no heartbeat since %s", n.Name, n.ID, last.UTC().Format(time.RFC3339))
		if mach, err := decodeMachine(rec.Snapshot); err == nil && mach.LastStored != nil {
			msg += fmt.Sprintf("; its last stored snapshot is from %s: 'cove wake %s --from-last-snapshot' goes back to it (the work since is lost)",
				mach.LastStored.At.UTC().Format(time.RFC3339), id)
		} else {
			msg += "; it has no stored snapshot to go back to"
		}
		was := rec.State
		rec.State, rec.Error, rec.Handle, rec.UpdatedAt = api.StateLost, msg, nil, time.Now().UTC()
		err = m.cfg.Store.UpdateSession(ctx, &rec)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			m.cfg.Log.Warn("node sweep: record a session lost", "session", id, "err", err)
			return
		}
		m.cfg.Log.Warn("session lost with its node", "session", id, "node", n.ID, "was", was)
		return
	}
}

// wakeHere makes parked session rec this node's to wake, where another
// node holds it: one that is dead (or removed) gives it up if its
// snapshot is stored (rec.Node is set to this node, recorded with the
// wake's next update), and so does a live one that is draining (a
// drained node's sessions wake elsewhere); another live one keeps it.
// A wake of this node's own session while it is draining stays here,
// and the log says why.
func (m *Manager) wakeHere(ctx context.Context, rec *store.Session) error {
	if m.cfg.Node == "" || rec.Node == "" {
		return nil
	}
	if rec.Node == m.cfg.Node {
		m.wakeOnDraining(ctx, *rec)
		return nil
	}
	n, err := m.cfg.Store.GetNode(ctx, rec.Node)
	switch {
	case errors.Is(err, store.ErrNotFound):
		n = store.Node{ID: rec.Node, Name: "(removed)", Dead: true}
	case err != nil:
		return fmt.Errorf("session: wake %s: its node: %w", rec.ID, err)
	}
	draining := !n.Dead && n.Admin == store.NodeDraining
	if !n.Dead && !draining {
		return api.Errorf(api.CodeConflict, "wake %s: the session is held by node %s (%s), which is alive: its server wakes it (a server that advertises a URL routes the call there)", rec.ID, n.Name, n.ID)
	}
	if rec.StoredManifest == "" {
		if draining {
			return api.Errorf(api.CodeConflict, "wake %s: the session is held by node %s (%s), which is draining, and its snapshot is not stored in the object store (yet): its server wakes it there", rec.ID, n.Name, n.ID)
		}
		return api.Errorf(api.CodeUnavailable, "wake %s: its latest snapshot%s is on node %s (%s) only, which is dead: it was never stored in the object store (its upload was cut short or failed), so it cannot wake elsewhere; %s",
			rec.ID, parkedAt(rec), n.Name, n.ID, lastStoredHint(rec))
	}
	if !m.nodeSchedulable(ctx) {
		return m.notSchedulable("wake " + rec.ID)
	}
	if draining {
		m.cfg.Log.Info("waking a session of a draining node here, from its stored snapshot", "session", rec.ID, "from_node", n.ID, "node", m.cfg.Node)
	} else {
		m.cfg.Log.Info("waking a session of a dead node here, from its stored snapshot", "session", rec.ID, "from_node", n.ID, "node", m.cfg.Node)
	}
	rec.Node = m.cfg.Node
	// Its files are restored into this node's session dir (the other
	// node's, on another host, is not here to read).
	from := sessionDirOf(rec.Snapshot)
	rec.Snapshot = rehome(rec.Snapshot, from, m.dir(rec.ID))
	// Files this node still has of the session are of an earlier stay
	// here (it came back after the session moved away): not the
	// snapshot's. Without its state file the wake restores the snapshot
	// whole (fetchSnapshot), reading the others only as seeds, whose
	// chunks are verified.
	if mach, err := decodeMachine(rec.Snapshot); err == nil && mach.Parked != nil && from != m.dir(rec.ID) {
		for _, p := range []string{mach.Parked.State, filepath.Join(m.dir(rec.ID), wokenFile)} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("session: wake %s: remove the files of its earlier stay here: %w", rec.ID, err)
			}
		}
	}
	return nil
}

// parkedAt is " (parked at T)" for a parked record that says when, else "".
func parkedAt(rec *store.Session) string {
	mach, err := decodeMachine(rec.Snapshot)
	if err != nil || mach.Parked == nil || mach.Parked.CreatedAt.IsZero() {
		return ""
	}
	return " (parked at " + mach.Parked.CreatedAt.UTC().Format(time.RFC3339) + ")"
}

// lastStoredHint says what a session whose latest snapshot cannot be
// had can go back to: its last stored snapshot, if any, which nothing
// restores unasked.
func lastStoredHint(rec *store.Session) string {
	mach, err := decodeMachine(rec.Snapshot)
	if err != nil || mach.LastStored == nil {
		return "it has no older stored snapshot to go back to: it wakes once that node is back"
	}
	return fmt.Sprintf("its last stored snapshot is from %s: 'cove wake %s --from-last-snapshot' goes back to it (the work since is lost), or it wakes as it is once that node is back",
		mach.LastStored.At.UTC().Format(time.RFC3339), rec.ID)
}

// dropMoved removes the files of session id that a wake fetched into
// this node's home to move it here, once another server's wake moved it
// to its own node first (the record, read again, names another node):
// they are no one's now.
func (m *Manager) dropMoved(ctx context.Context, id string) {
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil || m.holds(rec, m.cfg.Node) {
		return
	}
	m.cfg.Log.Info("another server's wake moved the session to its node first: the files fetched here are removed", "session", id, "node", rec.Node)
	if err := os.RemoveAll(m.dir(id)); err != nil {
		m.cfg.Log.Warn("remove the files of a session moved elsewhere", "session", id, "err", err)
	}
}

// WakeFromLastSnapshot brings back a lost session (its node died while
// it ran), or a failed one, from its last stored snapshot, on this node:
// the work done since that snapshot is gone, as the caller asks. The
// session keeps its id, owner and policy; it runs when this returns.
func (m *Manager) WakeFromLastSnapshot(ctx context.Context, id string) (api.Session, error) {
	if err := m.takesVMs("wake " + id); err != nil {
		return api.Session{}, err
	}
	if err := m.toLastSnapshot(ctx, id); err != nil {
		return api.Session{}, err
	}
	s, err := m.wake(ctx, id, CauseAPI, "")
	if err != nil {
		return api.Session{}, fmt.Errorf("session: wake %s from its last snapshot: the session is parked at that snapshot, and its wake failed: %w", id, err)
	}
	m.cfg.Log.Info("session woken from its last stored snapshot", "session", id)
	return s, nil
}

// toLastSnapshot records lost or failed session id parked at its last
// stored snapshot, on this node.
func (m *Manager) toLastSnapshot(ctx context.Context, id string) error {
	unlock := m.lock(id)
	defer unlock()
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return notFound(id, err)
	}
	if rec.State == api.StateParked {
		if err := m.parkedOnDeadNode(ctx, rec); err != nil {
			return err
		}
	} else if rec.State != api.StateLost && rec.State != api.StateFailed {
		return api.Errorf(api.CodeConflict, "wake %s --from-last-snapshot: the session is %s: only a lost or failed session, or a parked one whose latest snapshot is on a dead node only, goes back to its last stored snapshot", id, rec.State)
	}
	mach, err := decodeMachine(rec.Snapshot)
	if err != nil || mach.LastStored == nil {
		return api.Errorf(api.CodeConflict, "wake %s --from-last-snapshot: the session has no stored snapshot to go back to", id)
	}
	ls := *mach.LastStored
	pm, err := decodeMachine(ls.Machine)
	if err == nil && pm.Parked == nil {
		err = errors.New("no snapshot recorded")
	}
	if err != nil {
		return api.Errorf(api.CodeUnavailable, "wake %s --from-last-snapshot: its last stored snapshot's record: %v", id, err)
	}
	if m.cfg.Objects == nil {
		return api.Errorf(api.CodeUnavailable, "wake %s --from-last-snapshot: this server has no object store", id)
	}
	if !m.nodeSchedulable(ctx) {
		return m.notSchedulable("wake " + id)
	}
	m.mu.Lock()
	l := m.live[id]
	m.mu.Unlock()
	if l != nil {
		return api.Errorf(api.CodeConflict, "wake %s --from-last-snapshot: its VM still runs here", id)
	}
	// Restored into this node's session dir (the node it ran on kept it
	// in its own).
	if moved, err := decodeMachine(rehome(ls.Machine, sessionDirOf(ls.Machine), m.dir(id))); err == nil && moved.Parked != nil {
		pm = moved
	}
	// What is here of the session's files is newer than the snapshot (a
	// disk written since): it goes, so that the wake restores the
	// snapshot whole from the object store.
	for _, p := range []string{pm.Parked.Mem, pm.Parked.State, pm.Disk, filepath.Join(m.dir(id), wokenFile)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("session: wake %s from its last snapshot: %w", id, err)
		}
	}
	pm.LastStored = &ls // kept, should this wake fail
	rec.State, rec.Error, rec.Handle, rec.UpdatedAt = api.StateParked, "", nil, time.Now().UTC()
	rec.Snapshot, rec.StoredManifest, rec.StoredBytes = pm.encode(), ls.Manifest, ls.Bytes
	if m.cfg.Node != "" {
		rec.Node = m.cfg.Node
	}
	if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
		return fmt.Errorf("session: wake %s from its last snapshot: %w", id, err)
	}
	m.cfg.Log.Warn("session goes back to its last stored snapshot", "session", id, "snapshot_at", ls.At, "manifest", ls.Manifest)
	return nil
}

// parkedOnDeadNode checks that parked session rec may go back to its
// last stored snapshot: its latest one is not stored and its node is
// dead (or removed), so that snapshot cannot be had. One that can wakes
// as it is (409).
func (m *Manager) parkedOnDeadNode(ctx context.Context, rec store.Session) error {
	if rec.StoredManifest != "" {
		return api.Errorf(api.CodeConflict, "wake %s --from-last-snapshot: its latest snapshot is stored: wake it as it is (cove wake %s)", rec.ID, rec.ID)
	}
	if rec.Node == "" || rec.Node == m.cfg.Node {
		return api.Errorf(api.CodeConflict, "wake %s --from-last-snapshot: its latest snapshot is on this node: wake it as it is (cove wake %s)", rec.ID, rec.ID)
	}
	n, err := m.cfg.Store.GetNode(ctx, rec.Node)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("session: wake %s --from-last-snapshot: its node: %w", rec.ID, err)
	case !n.Dead:
		return api.Errorf(api.CodeConflict, "wake %s --from-last-snapshot: its latest snapshot is on node %s (%s), which is alive: wake it as it is (cove wake %s)", rec.ID, n.Name, n.ID, rec.ID)
	}
	m.cfg.Log.Warn("a parked session goes back to its last stored snapshot: its latest one is on a dead node only", "session", rec.ID, "node", n.ID)
	return nil
}

// fence stops the VMs this node runs for sessions that are no longer its
// own (woken on another node since) or are recorded lost (its node was
// taken for dead): after a partition, one session never runs twice. It
// returns the sessions of the VMs it checked (those running here, and
// those frozen) that the store still records this node's: the frozen
// ones of those may run on (thaw). One the store could not say about is
// in neither.
func (m *Manager) fence(ctx context.Context) map[string]bool {
	m.mu.Lock()
	ids := make([]string, 0, len(m.live))
	for id, l := range m.live {
		if !l.deleting {
			ids = append(ids, id)
		}
	}
	m.mu.Unlock()
	running := len(ids)
	// A frozen VM of a session being parked or removed is only told
	// about here: the operation under way holds the session and ends its
	// VM, or gives it back to the next fence.
	ids = append(ids, m.frozenIDs()...)
	mine := make(map[string]bool, len(ids))
	for i, id := range ids {
		if _, seen := mine[id]; seen {
			continue
		}
		rec, err := m.cfg.Store.GetSession(ctx, id)
		if err != nil {
			continue
		}
		if rec.State != api.StateLost && (rec.Node == "" || rec.Node == m.cfg.Node) {
			mine[id] = true
			continue
		}
		mine[id] = false
		if i >= running {
			continue
		}
		unlock := m.lock(id)
		m.mu.Lock()
		l := m.live[id]
		if l != nil {
			l.deleting = true
			delete(m.live, id)
		}
		m.mu.Unlock()
		if l != nil {
			l.client().Close()
			if err := l.vm.Stop(ctx); err != nil {
				m.cfg.Log.Warn("fence: stop the VM", "session", id, "err", err)
			}
			m.unfreeze(id, l.vm)
			m.cfg.Log.Warn("fenced: stopped the VM of a session this node lost or another node runs", "session", id, "state", rec.State, "node", rec.Node)
		}
		unlock()
	}
	return mine
}

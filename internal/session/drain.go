package session

import (
	"context"
	"errors"
	"os"
	"strings"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
)

// Drain (issue 19): `cove node drain` parks every session of the node and
// stores it; each then wakes elsewhere on its next call, and the node ends
// empty.
//
// Draining and cordoned differ there: a cordoned node takes no new
// session but its own sessions wake back on it; a draining node's parked
// sessions move away. A call that may wake a parked session of a draining
// node is routed (routing.Router.Wake) to a node that takes sessions, and
// its server's wake moves the session there (wakeHere) and restores it
// from the object store, as for a dead node's. A session whose snapshot
// is not stored (no object store, or its upload not done) wakes back on
// the draining node, and so does one no other node takes: that node's
// server logs why (wakeOnDraining). The moved sessions' files on the
// draining node are removed at its next heartbeat (dropMovedAway).

// waitStored waits until the uploads of the sessions ids, parked here,
// are over, and returns those whose snapshot is not stored with why.
// Without an object store there is nothing to wait for: the sessions
// stay on this node (a wake logs why).
func (m *Manager) waitStored(ctx context.Context, ids []string) map[string]string {
	notStored := map[string]string{}
	if m.cfg.Objects == nil {
		return notStored
	}
	for _, id := range ids {
		m.ups.mu.Lock()
		u := m.ups.running[id]
		m.ups.mu.Unlock()
		if u != nil && u.ended != nil {
			select {
			case <-u.ended:
			case <-ctx.Done():
				notStored[id] = "its upload did not end before the drain was given up: " + ctx.Err().Error()
				continue
			}
		}
		rec, err := m.cfg.Store.GetSession(ctx, id)
		switch {
		case err != nil:
			notStored[id] = "read its record: " + err.Error()
		case rec.State == api.StateParked && rec.StoredManifest == "" && m.holds(rec, m.cfg.Node):
			notStored[id] = "its snapshot is not stored in the object store (see this server's log: a failed upload is tried again; a disk with checkpoint layers is never stored): it wakes back on this node until it is"
		}
	}
	return notStored
}

// wakeOnDraining logs why session rec, this node's, wakes back on it
// while the node is draining (its wake was not sent to another node).
func (m *Manager) wakeOnDraining(ctx context.Context, rec store.Session) {
	n, err := m.cfg.Store.GetNode(ctx, m.cfg.Node)
	if err != nil || n.Admin != store.NodeDraining {
		return
	}
	why := "no other live node takes sessions (or this server routes no calls to other servers)"
	switch {
	case m.cfg.Objects == nil:
		why = "this server has no object store (--objects): its snapshot is on this node alone"
	case rec.StoredManifest == "":
		why = "its snapshot is not stored in the object store yet (its upload is under way or failing)"
	}
	m.cfg.Log.Warn("a session of this draining node wakes back on it", "session", rec.ID, "node", m.cfg.Node, "why", why)
}

// dropMovedAway removes, while this node is draining, the session dirs
// of sessions recorded on another node since (woken elsewhere: their
// files here are no one's), so that a drained node ends empty. Each is
// checked and removed under the session's lock (a wake moving a session
// here holds it while it fetches the files).
func (m *Manager) dropMovedAway(ctx context.Context) {
	if m.cfg.Node == "" || m.cfg.NoNode {
		return
	}
	n, err := m.cfg.Store.GetNode(ctx, m.cfg.Node)
	if err != nil || n.Admin != store.NodeDraining {
		return
	}
	ents, err := os.ReadDir(m.cfg.Dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		id := e.Name()
		if !e.IsDir() || !strings.HasPrefix(id, "s-") {
			continue
		}
		m.dropIfMoved(ctx, id)
	}
}

// dropIfMoved removes session id's dir here if its record names another
// node and no VM of it runs here.
func (m *Manager) dropIfMoved(ctx context.Context, id string) {
	unlock := m.lock(id)
	defer unlock()
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil || m.holds(rec, m.cfg.Node) {
		return // a record that cannot be read, or none (the start's sweep has those)
	}
	m.mu.Lock()
	l := m.live[id]
	m.mu.Unlock()
	if l != nil {
		return // fence stops it first
	}
	m.stopUpload(id)
	if err := os.RemoveAll(m.dir(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.cfg.Log.Warn("remove the files of a session woken on another node", "session", id, "err", err)
		return
	}
	m.cfg.Log.Info("removed the files of a session woken on another node: this draining node no longer holds it", "session", id, "node", rec.Node)
}

// movesAway reports whether parked session rec, this node's, wakes on
// another node: this node is draining, the snapshot is stored, and
// another live node takes sessions and advertises a URL (what
// routing.Router.Wake sends it to). Its deliveries are then that node's
// server's to make (deliversFor).
func (m *Manager) movesAway(ctx context.Context, rec store.Session) bool {
	if !m.cfg.Route && !m.cfg.Linked || rec.State != api.StateParked || rec.StoredManifest == "" {
		return false
	}
	if n, err := m.cfg.Store.GetNode(ctx, m.cfg.Node); err != nil || n.Admin != store.NodeDraining {
		return false
	}
	nodes, err := m.cfg.Store.ListNodes(ctx)
	if err != nil {
		return false
	}
	for _, n := range nodes {
		if n.ID != m.cfg.Node && !n.Dead && n.Admin == "" && n.URL != "" {
			return true
		}
	}
	return false
}

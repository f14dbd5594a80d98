package session

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/placement"
	"github.com/cove-dev/cove/internal/store"
)

// Nodes: the VM hosts sessions run on.
//
// This server's own VMs run on its embedded node (Config.Node), which
// cmd/cove registers at start (RegisterEmbeddedNode) and which this
// manager heartbeats. New sessions are placed (package placement) over
// the registered nodes: this server's embedded node and, with
// Config.Route, other servers' embedded nodes that advertise a URL (see
// route.go); remote nodes are listed with the reason they do not take
// any yet. A cordoned or draining node takes no new
// session, and a draining node keeps no warm pool.
//
// The sweeper (every third of Config.NodeGrace, under the claim
// nodes/sweep) marks dead the nodes whose last heartbeat is older than
// the grace, counting only the time since which its own store calls
// have succeeded without a break (fence.go): a store outage does not
// make every node look dead. The running sessions of a dead node are
// recorded lost (lost.go).

// RegisterEmbeddedNode records the embedded node named name in st, with
// capacity c, and returns it: the record of that name if there is one
// (a restarted server keeps its node's id), heartbeated now, else a new
// one. A node of that name that joined as a remote node is an error: two
// hosts would share one record.
func RegisterEmbeddedNode(ctx context.Context, st store.Store, name string, c store.NodeCapacity) (store.Node, error) {
	if name == "" {
		return store.Node{}, errors.New("node: register: empty name")
	}
	now := time.Now().UTC()
	n, err := st.GetNodeByName(ctx, name)
	switch {
	case err == nil:
		if !n.Embedded {
			return store.Node{}, fmt.Errorf("node: register %q: a remote node joined with that name (%s); give this server's node another (--node-name)", name, n.ID)
		}
		if err := st.HeartbeatNode(ctx, n.ID, now, c); err != nil {
			return store.Node{}, fmt.Errorf("node: register %q: %w", name, err)
		}
		return st.GetNode(ctx, n.ID)
	case !errors.Is(err, store.ErrNotFound):
		return store.Node{}, fmt.Errorf("node: register %q: %w", name, err)
	}
	n = store.Node{ID: store.NewNodeID(), Name: name, Capacity: c, Embedded: true, JoinedAt: now, HeartbeatAt: now}
	if err := st.CreateNode(ctx, &n); err != nil {
		return store.Node{}, fmt.Errorf("node: register %q: %w", name, err)
	}
	return n, nil
}

// startNodeLoops starts the embedded node's heartbeats and the sweeper,
// as configured.
func (m *Manager) startNodeLoops() {
	if m.cfg.Node != "" && m.cfg.NodeProbe != nil && !m.cfg.Linked {
		m.bg.Add(1)
		go m.heartbeatLoop()
	}
	if m.cfg.NodeGrace > 0 {
		// Dead nodes are found within a third of the grace.
		m.every(max(m.cfg.NodeGrace/3, time.Millisecond), func(context.Context) { m.SweepNodes(context.Background()) })
	}
	if m.cfg.Node != "" && !m.cfg.NoNode && m.cfg.FenceAfter > 0 {
		m.beat() // its clock starts with this server's
		// Checked a few times within the span, so the freeze comes
		// close to FenceAfter without a heartbeat.
		m.every(min(max(m.cfg.FenceAfter/8, time.Millisecond), time.Second), func(context.Context) { m.freezeIfCut() })
	}
}

// heartbeatLoop heartbeats the embedded node with a fresh probe every
// Config.NodeHeartbeat until the manager stops; one that failed is tried
// again after a fifth of that, so that one lost heartbeat does not make
// the node freeze its VMs (Config.FenceAfter).
func (m *Manager) heartbeatLoop() {
	defer m.bg.Done()
	every := m.cfg.NodeHeartbeat
	if every <= 0 {
		every = 10 * time.Second
	}
	next := time.NewTimer(every)
	defer next.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-next.C:
		}
		next.Reset(every)
		ctx, cancel := context.WithTimeout(context.Background(), every)
		c, err := m.cfg.NodeProbe(ctx)
		probed := err == nil
		if probed {
			err = m.cfg.Store.HeartbeatNode(ctx, m.cfg.Node, time.Now().UTC(), c)
		}
		cancel()
		switch {
		case errors.Is(err, store.ErrNotFound):
			m.view.ok()
			m.cfg.Log.Error("node heartbeat: this server's node was removed (cove node rm); it registers again at the server's next start", "node", m.cfg.Node)
		case err != nil:
			if probed { // the store failed, not the probe
				m.view.failed()
			}
			next.Reset(max(every/5, time.Millisecond))
			m.cfg.Log.Warn("node heartbeat", "node", m.cfg.Node, "err", err)
		default:
			m.view.ok()
			fctx, cancel := context.WithTimeout(context.Background(), every)
			m.Heartbeated(fctx)
			cancel()
		}
	}
}

// Heartbeated runs what follows a heartbeat of this manager's node that
// the store took, once its answer came: it restarts the node's fence
// clock (Config.FenceAfter, fence.go), stops the VMs of sessions that
// are no longer this node's (fence), thaws the frozen VMs of those that
// still are and, while the node is draining, removes the files of
// sessions that woke elsewhere (dropMovedAway). The heartbeat loop calls
// it; a Linked manager's agent calls it after each of its heartbeats.
func (m *Manager) Heartbeated(ctx context.Context) {
	if m.cfg.Node == "" || m.cfg.NoNode {
		return
	}
	m.beat()
	m.fz.run.Lock()
	m.thaw(ctx, m.fence(ctx))
	m.fz.run.Unlock()
	m.dropMovedAway(ctx)
}

// SweepNodes marks dead, under the claim nodes/sweep, every node whose
// last heartbeat is older than Config.NodeGrace, counting only the time
// since which this manager's store calls have succeeded without a break
// (overdue), and returns their ids.
// A server that finds the claim held by another does nothing: that one
// sweeps.
func (m *Manager) SweepNodes(ctx context.Context) []string {
	if m.cfg.NodeGrace <= 0 {
		return nil
	}
	// Read first without the claim: a round that finds no node due
	// writes nothing, and every server's read keeps its own view of the
	// store (storeView) current, whichever server sweeps.
	nodes, err := m.cfg.Store.ListNodes(ctx)
	if err != nil {
		m.view.failed()
		m.cfg.Log.Warn("node sweep", "err", err)
		return nil
	}
	seen, now := m.view.ok(), time.Now()
	if !slices.ContainsFunc(nodes, func(n store.Node) bool { return m.overdue(n, seen, now) }) {
		return nil
	}
	lctx, release, ok := m.lease(ctx, "nodes/sweep")
	if !ok {
		return nil
	}
	defer release()
	nodes, err = m.cfg.Store.ListNodes(lctx)
	if err != nil {
		m.view.failed()
		m.cfg.Log.Warn("node sweep", "err", err)
		return nil
	}
	seen, now = m.view.ok(), time.Now()
	var dead []string
	for _, n := range nodes {
		if !m.overdue(n, seen, now) {
			continue
		}
		last := n.HeartbeatAt
		if last.IsZero() {
			last = n.JoinedAt
		}
		n.Dead = true
		// A conflict is an operator's change since the read: the next
		// round sees it. A heartbeat moves no generation, so one that
		// came since is overwritten; the node's next heartbeat clears
		// Dead again.
		if err := m.cfg.Store.UpdateNode(lctx, &n); err != nil {
			m.cfg.Log.Warn("node sweep: mark dead", "node", n.ID, "err", err)
			continue
		}
		dead = append(dead, n.ID)
		m.cfg.Log.Warn("node marked dead: no heartbeat for longer than the grace", "node", n.ID, "name", n.Name,
			"last_heartbeat", last, "grace", m.graceOf(n), "running_sessions", m.countRunning(lctx, n.ID))
		m.loseSessions(lctx, n, last)
	}
	return dead
}

// overdue reports whether node n, not yet dead, has gone longer than the
// grace without a heartbeat, counting only time this manager could see:
// since seen, from which its store calls have succeeded without a break
// (storeView). A node whose heartbeats the store could not take while
// this manager could not reach it either is given a grace from then.
func (m *Manager) overdue(n store.Node, seen, now time.Time) bool {
	last := n.HeartbeatAt
	if last.IsZero() {
		last = n.JoinedAt
	}
	if n.Dead || last.IsZero() {
		return false
	}
	return min(now.Sub(last), now.Sub(seen)) > m.graceOf(n)
}

// graceOf is how long node n may go without a heartbeat before it is
// marked dead: Config.NodeGrace, or twice the span after which n says it
// freezes its VMs, if longer (a node given a longer --node-grace than
// this server's has frozen its VMs before its sessions run elsewhere).
func (m *Manager) graceOf(n store.Node) time.Duration {
	f := min(n.Capacity.FenceAfter(), store.MaxFenceAfter)
	if 2*f > m.cfg.NodeGrace {
		m.warnGrace(n, f)
		return 2 * f
	}
	return m.cfg.NodeGrace
}

// warnGrace says, once per node, that node n freezes its VMs later than
// this server's grace allows for, so that it is marked dead later.
func (m *Manager) warnGrace(n store.Node, fence time.Duration) {
	if _, told := m.graceWarned.LoadOrStore(n.ID, true); told {
		return
	}
	m.cfg.Log.Warn("node freezes its VMs after longer without a heartbeat than this server's --node-grace allows for: it is marked dead only after twice that; give nodes and servers the same --node-grace",
		"node", n.ID, "name", n.Name, "fence_after", fence, "grace", m.cfg.NodeGrace, "grace_used", 2*fence)
}

// countRunning counts the sessions of node that are recorded running
// (for the log), or -1 if the store cannot say.
func (m *Manager) countRunning(ctx context.Context, node string) int {
	usage, err := m.cfg.Store.SessionUsage(ctx)
	if err != nil {
		return -1
	}
	n := 0
	for _, u := range usage {
		if m.holds(store.Session{Node: u.Node}, node) && u.State == api.StateRunning {
			n += u.Sessions
		}
	}
	return n
}

// holds reports whether node holds the session of rec: its recorded
// node, or the embedded node for records from before nodes (a Linked
// node holds none of those).
func (m *Manager) holds(rec store.Session, node string) bool {
	return rec.Node == node || rec.Node == "" && node == m.cfg.Node && node != "" && !m.cfg.Linked
}

// takesVMs reports whether this server runs VMs: false with
// Config.NoNode, when op ("create", "wake") fails with 503.
func (m *Manager) takesVMs(op string) error {
	if !m.cfg.NoNode {
		return nil
	}
	if m.cfg.Route {
		return api.Errorf(api.CodeUnavailable, "%s: this server runs no node (--node=false), and no live node whose server advertises a URL could take it", op)
	}
	return api.Errorf(api.CodeUnavailable, "%s: no node fits: this server runs no node (--node=false), and calls are not routed to other servers (none of them advertises a URL: --advertise-url)", op)
}

// holdsVM reports whether a session's VM state is on its node: every
// state but parked and failed (a parked session holds only files).
func holdsVM(state string) bool {
	return state != api.StateParked && state != api.StateFailed && state != api.StateLost
}

// place chooses the node for a new session of memMiB and cpus, cloned
// from template ("" for a boot), on a node with the selector's labels.
// Without a node registry (Config.Node "" and not NoNode) it places
// nothing and returns "". Another server's node is returned as an
// *ElsewhereError (see unusable); the error of a refusal (503) says why
// each node did not. A session placed on this server's node holds its
// room until the caller records it with record or releases the
// reservation (reserve.go).
func (m *Manager) place(ctx context.Context, memMiB, cpus int, selector map[string]string, template string) (string, *reservation, error) {
	if m.cfg.Node == "" && !m.cfg.NoNode {
		return "", nil, nil
	}
	m.placing.mu.Lock()
	defer m.placing.mu.Unlock()
	nodes, err := m.cfg.Store.ListNodes(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("session: place: %w", err)
	}
	usage, err := m.cfg.Store.SessionUsage(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("session: place: %w", err)
	}
	used := map[string]placement.Resources{}
	if m.cfg.Node != "" {
		used[m.cfg.Node] = m.placing.reserved
	}
	for _, u := range usage {
		if !holdsVM(u.State) {
			continue
		}
		node := u.Node
		if node == "" {
			node = m.cfg.Node
		}
		r := used[node]
		r.MemoryMiB += u.MemoryMiB
		r.VCPUs += u.CPUs
		used[node] = r
	}
	cands := make([]placement.Node, len(nodes))
	for i, n := range nodes {
		cands[i] = placement.Node{ID: n.ID, Name: n.Name, Labels: n.Labels, Admin: n.Admin, Dead: n.Dead, Used: used[n.ID],
			Capacity: placement.Resources{MemoryMiB: n.Capacity.MemoryMiB, VCPUs: int64(n.Capacity.VCPUs), DiskBytes: n.Capacity.DiskBytes}}
		cands[i].Unusable = m.unusable(ctx, n)
		if cands[i].Unusable == "" && slices.Contains(refusedBy(ctx), n.ID) {
			cands[i].Unusable = "it refused this create: no room there when it reached its server"
		}
		if template != "" && n.ID == m.cfg.Node {
			m.mu.Lock()
			p := m.pools[template]
			cands[i].Pooled = p != nil && len(p.ready) > 0 // clones ready now
			m.mu.Unlock()
		}
	}
	req := placement.Resources{MemoryMiB: int64(memMiB), VCPUs: int64(cpus)}
	id, err := placement.Choose(cands, placement.Request{
		Resources: req, Selector: selector, Template: template,
		MemoryOvercommit: m.cfg.Admission.memoryOvercommit(), CPUOvercommit: m.cfg.Admission.cpuOvercommit(),
	})
	if err != nil {
		// Room may come (and another server's placement may find it
		// elsewhere): a refusal for want of room now (IsNoRoom).
		return "", nil, &hostFullError{api.Errorf(api.CodeUnavailable, "%v", err)}
	}
	if id != m.cfg.Node || m.cfg.NoNode {
		for _, n := range nodes {
			if n.ID == id {
				return "", nil, &ElsewhereError{Node: n}
			}
		}
	}
	return id, m.reserve(req), nil
}

// checkSelector checks a create's node selector: label keys are
// non-empty and neither keys nor values hold '=' or ','.
func checkSelector(field string, sel map[string]string) error {
	for k, v := range sel {
		if k == "" || strings.ContainsAny(k, "=,") || strings.ContainsAny(v, ",") {
			return api.Errorf(api.CodeInvalid, "%s: label %q=%q: want KEY=VALUE, with a non-empty key and no ',' (nor '=' in the key)", field, k, v)
		}
	}
	return nil
}

// nodeSchedulable reports whether the embedded node takes new sessions
// and keeps warm pools: not cordoned, draining or dead. Without a node
// registry it always does; a store that cannot say counts as yes (the
// pool is kept as before).
func (m *Manager) nodeSchedulable(ctx context.Context) bool {
	if m.cfg.Node == "" {
		return !m.cfg.NoNode
	}
	n, err := m.cfg.Store.GetNode(ctx, m.cfg.Node)
	if err != nil {
		return !errors.Is(err, store.ErrNotFound)
	}
	return n.Admin == "" && !n.Dead
}

// Nodes lists the registered nodes, ordered by name, with their
// sessions counted.
func (m *Manager) Nodes(ctx context.Context) ([]api.Node, error) {
	nodes, err := m.cfg.Store.ListNodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("session: nodes: %w", err)
	}
	usage, err := m.cfg.Store.SessionUsage(ctx)
	if err != nil {
		return nil, fmt.Errorf("session: nodes: %w", err)
	}
	out := make([]api.Node, len(nodes))
	for i, n := range nodes {
		out[i] = m.nodeAPI(n, usage)
	}
	return out, nil
}

// Node returns the node with the given id or name.
func (m *Manager) Node(ctx context.Context, idOrName string) (api.Node, error) {
	n, err := m.node(ctx, idOrName)
	if err != nil {
		return api.Node{}, err
	}
	usage, err := m.cfg.Store.SessionUsage(ctx)
	if err != nil {
		return api.Node{}, fmt.Errorf("session: node %s: %w", idOrName, err)
	}
	return m.nodeAPI(n, usage), nil
}

// node reads the node with the given id or name: 404 if none.
func (m *Manager) node(ctx context.Context, idOrName string) (store.Node, error) {
	n, err := m.cfg.Store.GetNode(ctx, idOrName)
	if errors.Is(err, store.ErrNotFound) {
		n, err = m.cfg.Store.GetNodeByName(ctx, idOrName)
	}
	if errors.Is(err, store.ErrNotFound) {
		return store.Node{}, api.Errorf(api.CodeNotFound, "no node %q", idOrName)
	}
	if err != nil {
		return store.Node{}, fmt.Errorf("session: node %s: %w", idOrName, err)
	}
	return n, nil
}

func (m *Manager) nodeAPI(n store.Node, usage []store.SessionUsage) api.Node {
	out := api.Node{ID: n.ID, Name: n.Name, State: store.NodeState(n), Labels: n.Labels, Embedded: n.Embedded,
		URL: n.URL, E2BURL: n.E2BURL, JoinedAt: n.JoinedAt, HeartbeatAt: n.HeartbeatAt,
		Capacity: api.NodeCapacity{VCPUs: n.Capacity.VCPUs, MemoryMiB: n.Capacity.MemoryMiB, DiskBytes: n.Capacity.DiskBytes,
			Accel: n.Capacity.Accel, CPUModel: n.Capacity.CPUModel, CPUFlags: n.Capacity.CPUFlags,
			QEMUVersion: n.Capacity.QEMUVersion, KernelVersion: n.Capacity.KernelVersion, FenceAfterMS: n.Capacity.FenceAfterMS}}
	for _, u := range usage {
		if m.holds(store.Session{Node: u.Node}, n.ID) {
			out.Sessions += u.Sessions
			if u.State == api.StateRunning {
				out.Running += u.Sessions
			}
		}
	}
	return out
}

// setAdmin sets the node's Admin to admin, reading it again on a
// conflict (a sweep, another operator), and returns it.
func (m *Manager) setAdmin(ctx context.Context, idOrName, admin string) (store.Node, error) {
	for range 5 {
		n, err := m.node(ctx, idOrName)
		if err != nil {
			return store.Node{}, err
		}
		if n.Admin == admin {
			return n, nil
		}
		n.Admin = admin
		err = m.cfg.Store.UpdateNode(ctx, &n)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return store.Node{}, fmt.Errorf("session: node %s: %w", idOrName, err)
		}
		m.cfg.Log.Info("node admin state set", "node", n.ID, "name", n.Name, "admin", admin)
		return n, nil
	}
	return store.Node{}, api.Errorf(api.CodeConflict, "node %s: changed by others while being set %q; try again", idOrName, admin)
}

// CordonNode stops the node from taking new sessions; its sessions stay.
func (m *Manager) CordonNode(ctx context.Context, idOrName string) (api.Node, error) {
	if _, err := m.setAdmin(ctx, idOrName, store.NodeCordoned); err != nil {
		return api.Node{}, err
	}
	return m.Node(ctx, idOrName)
}

// UncordonNode lets the node take new sessions again (from cordoned or
// draining).
func (m *Manager) UncordonNode(ctx context.Context, idOrName string) (api.Node, error) {
	if _, err := m.setAdmin(ctx, idOrName, ""); err != nil {
		return api.Node{}, err
	}
	m.refillAll()
	return m.Node(ctx, idOrName)
}

// DrainNode sets the node draining (no new sessions, no warm pool) and
// parks every session running on it. Only the embedded node's sessions
// are parked in this version: a remote node is only set draining. The
// result counts what was parked; a session that could not be is listed
// in its Errors, and a drain may be run again.
func (m *Manager) DrainNode(ctx context.Context, idOrName string) (api.DrainResult, error) {
	n, err := m.setAdmin(ctx, idOrName, store.NodeDraining)
	if err != nil {
		return api.DrainResult{}, err
	}
	var res api.DrainResult
	if n.ID == m.cfg.Node && !m.cfg.NoNode {
		m.dropPools()
		recs, err := m.cfg.Store.ListSessions(ctx)
		if err != nil {
			return api.DrainResult{}, fmt.Errorf("session: drain %s: %w", n.ID, err)
		}
		var parked []string
		for _, r := range recs {
			if !m.holds(r, n.ID) || r.State != api.StateRunning {
				continue
			}
			if _, err := m.park(ctx, r.ID, CauseDrain); err != nil {
				res.Errors = append(res.Errors, r.ID+": "+err.Error())
				continue
			}
			res.Parked++
			parked = append(parked, r.ID)
		}
		// Stored before the drain returns: each then wakes elsewhere
		// (drain.go).
		notStored := m.waitStored(ctx, parked)
		for _, id := range parked {
			if why, ok := notStored[id]; ok {
				res.Errors = append(res.Errors, id+": parked, but "+why)
			}
		}
		m.cfg.Log.Info("node drained", "node", n.ID, "parked", res.Parked, "failed", len(res.Errors))
	}
	if res.Node, err = m.Node(ctx, n.ID); err != nil {
		return api.DrainResult{}, err
	}
	return res, nil
}

// RemoveNode deletes the node's record. A node that holds sessions is
// refused (409) unless it is dead: its sessions then keep naming it.
func (m *Manager) RemoveNode(ctx context.Context, idOrName string) error {
	n, err := m.node(ctx, idOrName)
	if err != nil {
		return err
	}
	if !n.Dead {
		recs, err := m.cfg.Store.ListSessions(ctx)
		if err != nil {
			return fmt.Errorf("session: remove node %s: %w", n.ID, err)
		}
		held := 0
		for _, r := range recs {
			if m.holds(r, n.ID) {
				held++
			}
		}
		if held > 0 {
			return api.Errorf(api.CodeConflict, "node %s holds %d sessions: drain it and remove them first, or wait until it is dead", n.Name, held)
		}
	}
	if err := m.cfg.Store.DeleteNode(ctx, n.ID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return api.Errorf(api.CodeNotFound, "no node %q", idOrName)
		}
		return fmt.Errorf("session: remove node %s: %w", n.ID, err)
	}
	m.cfg.Log.Info("node removed", "node", n.ID, "name", n.Name)
	return nil
}

// dropPools stops the ready clones of every warm pool (a draining node
// keeps none); the pools' fillers stay, and refill once the node is
// schedulable again.
func (m *Manager) dropPools() {
	m.mu.Lock()
	pools := make([]*pool, 0, len(m.pools))
	for _, p := range m.pools {
		pools = append(pools, p)
	}
	m.mu.Unlock()
	for _, p := range pools {
		m.dropReady(p)
	}
}

// refillAll kicks every pool's filler.
func (m *Manager) refillAll() {
	m.mu.Lock()
	names := make([]string, 0, len(m.pools))
	for name := range m.pools {
		names = append(names, name)
	}
	m.mu.Unlock()
	for _, name := range names {
		m.refill(name)
	}
}

// adoptLegacy writes the embedded node's id into a session recorded
// before nodes existed (Node ""), which the embedded node holds.
func (m *Manager) adoptLegacy(ctx context.Context, rec *store.Session) {
	if m.cfg.Node == "" || m.cfg.NoNode || m.cfg.Linked || rec.Node != "" {
		return
	}
	rec.Node = m.cfg.Node
	if err := m.cfg.Store.UpdateSession(ctx, rec); err != nil {
		rec.Node = ""
		m.cfg.Log.Warn("adopt session into the embedded node", "session", rec.ID, "err", err)
	}
}

// memoryOvercommit and cpuOvercommit are the ratios admit uses, for
// placement.
func (a Admission) memoryOvercommit() float64 {
	if a.MemoryOvercommit > 0 {
		return a.MemoryOvercommit
	}
	return DefaultMemoryOvercommit
}

func (a Admission) cpuOvercommit() float64 {
	if a.CPUOvercommit > 0 {
		return a.CPUOvercommit
	}
	return DefaultCPUOvercommit
}

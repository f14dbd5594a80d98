package session

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/vmm"
)

// Self-fencing and the store-outage rule (issue 19).
//
// A session must never run on two nodes. The sweeper (node.go) marks a
// node dead once it has gone NodeGrace without a heartbeat, and its
// running sessions lost; 'cove wake --from-last-snapshot' may then run
// one elsewhere. Two things keep that from running a session twice, or
// from losing a fleet to a store outage:
//
//   - The sweeper judges a node only over time it could see: it keeps
//     the time since which its own store calls have succeeded without a
//     break (storeView: a failed sweep read or a failed heartbeat of its
//     own node restarts it, and so does its start), and marks a node dead
//     only when now − max(last heartbeat, that time) > NodeGrace. After a
//     store outage longer than the grace, the nodes get a grace from the
//     store's return to heartbeat again, rather than all being taken for
//     dead at the first sweep.
//   - A node that cannot heartbeat for Config.FenceAfter (less than the
//     grace) freezes every VM it runs (vmm.Freezer: the VMM process is
//     stopped whole, its memory kept), and logs it: it cannot tell a
//     partition, after which another node may take its sessions over,
//     from a store outage. Its clock starts when its last heartbeat's
//     answer came, which is never before the store's record of it, so
//     it has frozen its VMs before any sweeper can take it for dead. At
//     its next heartbeat the store took (Heartbeated), it stops the VMs
//     of the sessions recorded lost or another node's (fence), and thaws
//     the rest, which run on where they stopped. While a session's VM is
//     frozen, the calls that need its guest fail at once with 503.
//
// The freeze is done by the driver (the session layer sends no signal
// itself); the fence runs where the manager runs, which is always the
// VMs' host.

// storeView is the time since which a manager's store calls have
// succeeded without a break, as the sweeper sees it.
type storeView struct {
	mu     sync.Mutex
	since  time.Time // guarded by mu: monotonic; the manager's start, or the first success after the last failure
	broken bool      // guarded by mu: a call failed since the last success
}

// ok records a store call that succeeded, and returns the time since
// which the calls have.
func (v *storeView) ok() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.broken {
		v.since, v.broken = time.Now(), false
	}
	return v.since
}

// failed records a store call that failed: the view restarts at the next
// success.
func (v *storeView) failed() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.broken = true
}

// StoreSeenSince says that this manager's view of the store has had no
// break since t, as if it had been running and calling the store since
// then: the sweeper then judges nodes over the time since t rather than
// since this manager started. For a caller that knows it (a test or a
// bench that backdates heartbeats); a later failed store call restarts
// the view as usual.
func (m *Manager) StoreSeenSince(t time.Time) {
	m.view.mu.Lock()
	defer m.view.mu.Unlock()
	m.view.since, m.view.broken = t, false
}

// fencing is a node's self-fencing state.
type fencing struct {
	run sync.Mutex // held by a round that freezes or thaws

	mu     sync.Mutex
	beat   time.Time         // guarded by mu: monotonic; when the answer of the node's last heartbeat came (or the manager's start)
	cut    bool              // guarded by mu: the node is taken for cut off: its VMs are frozen until a heartbeat
	frozen map[string]vmm.VM // guarded by mu: the VMs frozen, by session id
}

// freezeIfCut freezes every VM this node runs that is not frozen yet, if
// its last heartbeat's answer came longer than Config.FenceAfter ago.
func (m *Manager) freezeIfCut() {
	m.fz.run.Lock()
	defer m.fz.run.Unlock()
	m.fz.mu.Lock()
	silent := time.Since(m.fz.beat)
	if silent <= m.cfg.FenceAfter {
		m.fz.mu.Unlock()
		return
	}
	first := !m.fz.cut
	m.fz.cut = true
	m.fz.mu.Unlock()
	if m.frz == nil {
		if first {
			m.cfg.Log.Error("node cut off from the store: no heartbeat for longer than the fence span, and its VMs cannot be frozen (the driver cannot): a session another node takes over may run twice",
				"node", m.cfg.Node, "no_heartbeat_for", silent.Round(time.Millisecond), "fence_after", m.cfg.FenceAfter)
		}
		return
	}
	m.mu.Lock()
	vms := make(map[string]vmm.VM, len(m.live))
	for id, l := range m.live {
		vms[id] = l.vm
	}
	m.mu.Unlock()
	n := 0
	for id, vm := range vms {
		m.fz.mu.Lock()
		done := m.fz.frozen[id] == vm
		m.fz.mu.Unlock()
		if done {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := m.frz.Freeze(ctx, vm)
		cancel()
		if err != nil {
			select {
			case <-vm.Done(): // stopped meanwhile
			default:
				m.cfg.Log.Error("node cut off from the store: freeze a VM", "session", id, "err", err)
			}
			continue
		}
		m.fz.mu.Lock()
		m.fz.frozen[id] = vm
		m.fz.mu.Unlock()
		n++
	}
	if first || n > 0 {
		m.cfg.Log.Error("node cut off from the store: its VMs are frozen until it heartbeats again (another node may take its sessions over once it is taken for dead)",
			"node", m.cfg.Node, "no_heartbeat_for", silent.Round(time.Millisecond), "fence_after", m.cfg.FenceAfter, "frozen_now", n)
	}
}

// beat records that a heartbeat of this node was answered now.
func (m *Manager) beat() {
	m.fz.mu.Lock()
	defer m.fz.mu.Unlock()
	m.fz.beat = time.Now()
}

// thaw lets run on the frozen VMs of the sessions in mine (those the
// store still records this node's, running on), and forgets those whose
// VMs are gone; the others stay frozen until a later heartbeat can tell.
func (m *Manager) thaw(ctx context.Context, mine map[string]bool) {
	m.fz.mu.Lock()
	frozen := maps.Clone(m.fz.frozen)
	cut := m.fz.cut
	m.fz.mu.Unlock()
	if !cut && len(frozen) == 0 {
		return
	}
	thawed, left := 0, 0
	for id, vm := range frozen {
		select {
		case <-vm.Done():
			m.unfreeze(id, vm)
			continue
		default:
		}
		if !mine[id] {
			left++
			continue
		}
		if err := m.frz.Thaw(ctx, vm); err != nil {
			m.cfg.Log.Error("thaw a VM", "session", id, "err", err)
			left++
			continue
		}
		m.unfreeze(id, vm)
		thawed++
	}
	if left > 0 {
		m.cfg.Log.Warn("node heartbeats again, but the store could not say whether some of its frozen sessions are still its own: they stay frozen until the next heartbeat", "node", m.cfg.Node, "thawed", thawed, "frozen", left)
		return
	}
	m.fz.mu.Lock()
	m.fz.cut = false
	m.fz.mu.Unlock()
	if cut {
		m.cfg.Log.Warn("node heartbeats again: its VMs still its own are thawed and run on", "node", m.cfg.Node, "thawed", thawed)
	}
}

// unfreeze forgets that session id's VM vm is frozen.
func (m *Manager) unfreeze(id string, vm vmm.VM) {
	m.fz.mu.Lock()
	defer m.fz.mu.Unlock()
	if m.fz.frozen[id] == vm {
		delete(m.fz.frozen, id)
	}
}

// frozenIDs returns the ids of the sessions whose VMs are frozen.
func (m *Manager) frozenIDs() []string {
	m.fz.mu.Lock()
	defer m.fz.mu.Unlock()
	ids := make([]string, 0, len(m.fz.frozen))
	for id := range m.fz.frozen {
		ids = append(ids, id)
	}
	return ids
}

// frozenErr is the error of a call that needs session id's guest while
// its VM is frozen (503), else nil.
func (m *Manager) frozenErr(id string) error {
	m.fz.mu.Lock()
	_, frozen := m.fz.frozen[id]
	m.fz.mu.Unlock()
	if !frozen {
		return nil
	}
	return api.Errorf(api.CodeUnavailable, "session %s: node cut off from the store: its VMs are frozen until it heartbeats again", id)
}

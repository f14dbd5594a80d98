package session

import (
	"time"

	"github.com/cove-dev/cove/internal/agentproto"
)

// GuestToken is what a tool in session id's guest gets when it asks for a
// token for audience ('cove-agent token'), without the guest.
func (m *Manager) GuestToken(id, audience string) (string, error) {
	return m.guestToken(id, agentproto.GuestRequest{Kind: agentproto.GuestToken, Audience: audience})
}

// GuestCheckpoint is what a tool in session id's guest gets when it asks,
// as its request reqID, for a checkpoint named name ('cove-agent
// checkpoint'), without the guest.
func (m *Manager) GuestCheckpoint(id, name string, reqID int64) (string, error) {
	return m.guestCheckpoint(id, agentproto.GuestRequest{ID: reqID, Kind: agentproto.GuestCheckpoint, Name: name})
}

// GuestRollback is what session id's host does when a tool in its guest
// asks to roll back to name ('cove-agent rollback'), without the guest.
func (m *Manager) GuestRollback(id, name string) error {
	return m.guestRollback(id, agentproto.GuestRequest{Kind: agentproto.GuestRollback, Name: name})
}

// WaitMemEncodes returns once no checkpoint's RAM is queued for, or in,
// its re-encoding (memchain.go).
func (m *Manager) WaitMemEncodes() {
	for {
		m.mu.Lock()
		idle := !m.encoding && len(m.encodeQ) == 0
		m.mu.Unlock()
		if idle {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Crash plays the death of the server's process, as a SIGKILL would end
// it: its background loops are told to stop (one stuck at a crash point
// stays there for good, its deferred work never run), its agent
// connections close and its VMs run on, and nothing waits for the work
// under way, unlike Close, which waits for the loops to end.
func (m *Manager) Crash() {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	for id, l := range m.live {
		l.deleting = true // their VMs keep running
		l.client().Close()
		_ = l.vm.Release()
		delete(m.live, id)
	}
}

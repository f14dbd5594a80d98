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

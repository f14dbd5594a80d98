package session

import "github.com/cove-dev/cove/internal/agentproto"

// GuestToken is what a tool in session id's guest gets when it asks for a
// token for audience ('cove-agent token'), without the guest.
func (m *Manager) GuestToken(id, audience string) (string, error) {
	return m.guestToken(id, agentproto.GuestRequest{Kind: agentproto.GuestToken, Audience: audience})
}

package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/store"
)

// A session's identity tokens. A tool in the guest asks for one
// ('cove-agent token --audience AUD') over the agent's listen stream; the
// manager mints it through Config.Tokens from the session's record, so
// it names the session's own owner, agent and id (a clone's, never its
// template's) and carries the session's token generation
// (store.Session.TokenGen). A token is honoured only while the session
// runs, is not revoked, and its generation is unchanged, and the
// generation moves on:
//
//   - on park, once the park is recorded and before the guest is cut off
//     and saved: guest memory goes to disk, and a token captured in the
//     snapshot must be dead when the snapshot wakes (or is read). The
//     guest asks again after the wake, and gets a fresh token;
//   - on Revoke, the kill switch, at once, without stopping the VM. A
//     revoke also marks the session's record (store.Session.
//     TokensRevokedAt) for the rest of its life: no token is minted for
//     it again, and none of its tokens is honoured, whoever asks;
//   - a removed session has no record, so none of its tokens holds.
//
// Tokens are minted only while the session's record says running and
// not revoked: one minted during a park would carry the new generation
// into the snapshot.
//
// Cove's own API checks all of this at each call; systems outside cove
// check only a token's signature and exp, so there a token minted before
// a park, revoke or removal holds until its exp (issuer.DefaultTTL, at
// most issuer.MaxTTL).

// TokenMinter mints sessions' identity tokens; sessiontoken.Minter is one.
// Its methods must be safe for concurrent use.
type TokenMinter interface {
	// MintSessionToken signs a token for the session rec, its Owner as
	// sub, its Agent and ID as act, its TokenGen, for audience, living
	// ttl (0: the minter's default). A ttl or audience out of bounds, or
	// a session with no owner, is an error that says why.
	MintSessionToken(rec store.Session, audience string, ttl time.Duration) (string, error)
}

// guestToken mints a token for session id, as the guest's req asks.
func (m *Manager) guestToken(id string, req agentproto.GuestRequest) (string, error) {
	if m.cfg.Tokens == nil {
		return "", errors.New("token: this server issues no session tokens")
	}
	if req.Audience == "" {
		return "", errors.New("token: no audience given")
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			return "", fmt.Errorf("token: ttl %q: want a positive duration like 10m", req.TTL)
		}
		ttl = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.answerTimeout())
	defer cancel()
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return "", fmt.Errorf("token: session %s: %w", id, err)
	}
	if !rec.TokensRevokedAt.IsZero() {
		return "", fmt.Errorf("token: this session's identity was revoked (cove session revoke, at %s); it gets no tokens again",
			rec.TokensRevokedAt.Format(time.RFC3339))
	}
	if rec.State != api.StateRunning {
		return "", fmt.Errorf("token: session %s is %s; tokens are minted only while it runs", id, rec.State)
	}
	// Recorded before it is minted: no token leaves unlogged.
	ev, err := m.beginEvent(ctx, Event{Kind: EventToken, Cause: CauseGuest, Session: id, Audience: req.Audience})
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	tok, err := m.cfg.Tokens.MintSessionToken(rec, req.Audience, ttl)
	m.doneEvent(ctx, ev, time.Now(), err)
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	m.cfg.Log.Info("session token minted", "session", id, "owner", rec.Owner, "agent", rec.Agent,
		"audience", req.Audience, "generation", rec.TokenGen)
	return tok, nil
}

// Revoke invalidates every identity token session id was given, at once
// (the kill switch), and for good: it bumps the session's token
// generation and marks its record revoked (store.RevokeSessionTokens).
// The VM runs on, but the session gets no identity token again: a tool
// in the guest that asks is refused. A clone has its own record and
// identity: another session's revoke does not carry over to it.
// It takes no lifecycle lock, so it is not held up by a park or wake
// under way. An unknown id is CodeNotFound.
func (m *Manager) Revoke(ctx context.Context, id string) (api.Session, error) {
	gen, err := m.cfg.Store.RevokeSessionTokens(ctx, id, time.Now().UTC())
	if err != nil {
		return api.Session{}, notFound(id, err)
	}
	m.cfg.Log.Info("session tokens revoked", "session", id, "generation", gen)
	if m.cfg.Egress != nil {
		// The kill switch cuts the session's egress too: its open
		// connections now, and new ones are refused for good (the
		// egress server reads the revocation from the record).
		m.cfg.Egress.Cut(id)
	}
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return api.Session{}, notFound(id, err)
	}
	return m.toAPI(rec), nil
}

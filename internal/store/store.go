// Package store declares cove's state store: the durable record of sessions,
// images, templates, triggers (events, subscriptions, deliveries and hook
// secrets), identities (users, their teams and their API tokens) and the
// sealed secrets the egress proxy adds to sessions' requests.
package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Errors a Store returns, wrapped with the operation that failed; test for
// them with errors.Is.
var (
	// ErrNotFound means no record has the given id or name.
	ErrNotFound = errors.New("store: not found")
	// ErrExists means a record with the given id already exists.
	ErrExists = errors.New("store: already exists")
	// ErrKeyUsed means a create came with an idempotency key its owner
	// had used already (see SessionKey).
	ErrKeyUsed = errors.New("store: idempotency key already used")
	// ErrUnavailable means the store cannot be used for now: its database
	// is locked by another process, read-only, out of space or failing.
	// The call changed nothing, and the same call on the same store may
	// succeed once the cause is gone.
	ErrUnavailable = errors.New("state store unavailable")
	// ErrConflict means an update was made from a stale copy: the record
	// was changed (its Gen moved on) since the caller read it. The call
	// changed nothing; read the record again and decide afresh.
	ErrConflict = errors.New("store: changed since it was read")
)

// SessionFeed is a store shared by several servers that tells each of
// them when any of them writes session records (PostgreSQL: LISTEN and
// NOTIFY). A store used by one server alone (SQLite) has none: its
// server sees its own writes.
type SessionFeed interface {
	// FollowSessions calls changed after each committed transaction
	// that created, updated or removed session records, whichever
	// server made it, until ctx ends; then it returns ctx's error. A
	// call says only "something changed"; several may stand for one.
	// While the feed is cut (its connection lost) it reconnects,
	// calling changed once connected again, since changes may have
	// been missed meanwhile.
	FollowSessions(ctx context.Context, changed func()) error
}

// Store is the durable record of sessions, images, templates, triggers and
// identities.
//
// Its contract, which every implementation meets (package storetest checks
// it):
//
//   - A call that returns nil has made its change durable: it survives Close,
//     a crash of the process and a reopen of the same store.
//   - Records come back exactly as they were written: times are the same
//     instant to the nanosecond, in UTC, with no monotonic reading; an Env,
//     Setup, Handle, Snapshot, Fields, Body, Until, Scopes, Hosts, Sealed or
//     hook secret of length zero may come back nil. The zero
//     time round-trips as the zero time. Times a store cannot represent make
//     the write fail and change nothing.
//   - Records passed in and handed out are copies: changing one afterwards
//     (its Env or Fields map, Setup, Until, Scopes or Hosts slice, or
//     Handle, Snapshot, Body, Sealed or hook secret bytes) does not change what the store holds.
//   - The store never sets a field itself; callers set UpdatedAt and the rest.
//     The exceptions are RecordEvent's, documented there: an event's Seq and
//     the deliveries it creates; and PutSecret keeps a replaced secret's
//     CreatedAt. Where a method changes a time (a token's
//     RevokedAt or LastUsedAt), the caller passes it.
//   - Every method is safe for concurrent use; concurrent writes all succeed
//     or fail on their own merits, never because another writer was busy.
//   - A call whose ctx is already done fails with an error wrapping ctx.Err()
//     and changes nothing.
//   - Errors for missing or duplicate records wrap ErrNotFound or ErrExists.
//   - Errors because the store cannot be used for now wrap ErrUnavailable
//     and say why; a write that fails so changes nothing (a transaction,
//     nothing of it), and the store needs no reopening once the cause is
//     gone.
//   - Every update of a session or a template is a compare-and-swap on
//     its generation (Gen): it is made only if the stored record is still
//     the one the caller read, and fails with ErrConflict, changing
//     nothing, if another writer (another goroutine, another server)
//     changed it since. The last writer never silently wins.
//   - Work that one server must do alone is claimed (Claim): a lease,
//     held until it is released or expires.
//   - No method may be called after Close.
type Store interface {
	// CreateSession inserts s at generation 1, whatever s.Gen, and sets
	// s.Gen to 1. It fails with ErrExists if a session with s.ID exists,
	// leaving that session unchanged. With s.IdempotencyKey, it records
	// the key (a SessionKey) in the same transaction, or fails with
	// ErrKeyUsed, changing nothing, if s.Owner has used it already.
	CreateSession(ctx context.Context, s *Session) error
	// SessionKey returns the create that owner made with idempotency key
	// key, or ErrNotFound. A key outlives its session: DeleteSession
	// leaves it.
	SessionKey(ctx context.Context, owner, key string) (SessionKey, error)
	// DeleteSessionKey frees owner's key (of a create given up, whose
	// session is gone), or fails with ErrNotFound if there is none.
	DeleteSessionKey(ctx context.Context, owner, key string) error
	// ExpireSessionKeys frees every key whose create was made (the
	// CreatedAt of the session CreateSession recorded it with) before
	// before, and returns how many it freed.
	ExpireSessionKeys(ctx context.Context, before time.Time) (int, error)
	// UpdateSession replaces the session with id s.ID by s, every field
	// but TokenGen and TokensRevokedAt, if its stored generation is
	// s.Gen: it stores generation s.Gen+1 and, on success only, sets
	// s.Gen to it. It fails with ErrConflict if the stored generation is
	// another (the record changed since s was read), and with ErrNotFound
	// if there is no such session; either changes nothing.
	UpdateSession(ctx context.Context, s *Session) error
	// GetSession returns the session with the given id, or ErrNotFound.
	GetSession(ctx context.Context, id string) (Session, error)
	// ListSessions returns every session, ordered by CreatedAt and then by
	// ID (bytewise). An empty store gives a slice of length zero.
	ListSessions(ctx context.Context) ([]Session, error)
	// ListSessionsAfter returns at most limit sessions in ListSessions'
	// order, starting after the position after (the CreatedAt and ID of
	// the last session of the previous page; its zero value starts from
	// the first): a page of the list, read from the index on (CreatedAt,
	// ID). Sessions created or removed between pages move no other: each
	// session there throughout is listed once. limit ≤ 0 gives none.
	ListSessionsAfter(ctx context.Context, after SessionCursor, limit int) ([]Session, error)
	// SessionUsage sums the sessions by the node that holds them and by
	// state: one row per (Node, State) pair that has sessions, ordered by
	// Node and then State (bytewise); an empty store gives a slice of
	// length zero. It reads no record whole: placement calls it on every
	// create, and node listings on every call.
	SessionUsage(ctx context.Context) ([]SessionUsage, error)
	// DeleteSession removes the session with the given id and its
	// checkpoints, or fails with ErrNotFound if there is none.
	DeleteSession(ctx context.Context, id string) error

	// CreateCheckpoint records c. It fails with ErrNotFound if there is no
	// session c.SessionID, and with ErrExists if that session has a
	// checkpoint named c.Name; either changes nothing.
	CreateCheckpoint(ctx context.Context, c Checkpoint) error
	// GetCheckpoint returns the named checkpoint of a session, or
	// ErrNotFound.
	GetCheckpoint(ctx context.Context, sessionID, name string) (Checkpoint, error)
	// ListCheckpoints returns a session's checkpoints, ordered by
	// CreatedAt and then by Name (bytewise). A session without any, or
	// no session of that id, gives a slice of length zero.
	ListCheckpoints(ctx context.Context, sessionID string) ([]Checkpoint, error)
	// UpdateCheckpoint replaces the Bytes and Manifest of the checkpoint
	// c.SessionID/c.Name (its files were re-encoded), or fails with
	// ErrNotFound if there is none.
	UpdateCheckpoint(ctx context.Context, c Checkpoint) error
	// DeleteCheckpoint removes the named checkpoint of a session, or fails
	// with ErrNotFound if there is none.
	DeleteCheckpoint(ctx context.Context, sessionID, name string) error
	// PutE2BSandbox inserts or replaces the E2B record of the session
	// x.SessionID. It fails with ErrNotFound if there is no such session,
	// changing nothing. DeleteSession removes it with its session.
	PutE2BSandbox(ctx context.Context, x E2BSandbox) error
	// GetE2BSandbox returns the E2B record of a session, or ErrNotFound.
	GetE2BSandbox(ctx context.Context, sessionID string) (E2BSandbox, error)
	// ListE2BSandboxes returns every E2B record, ordered by SessionID
	// (bytewise). None gives a slice of length zero.
	ListE2BSandboxes(ctx context.Context) ([]E2BSandbox, error)
	// DeleteE2BSandbox removes the E2B record of a session, or fails with
	// ErrNotFound if there is none; the session stays.
	DeleteE2BSandbox(ctx context.Context, sessionID string) error
	// DueE2BSandboxes returns at most limit E2B records whose DueAt is
	// set and not after at, ordered by DueAt and then by SessionID
	// (bytewise): the end-time sweep's work, read from an index.
	DueE2BSandboxes(ctx context.Context, at time.Time, limit int) ([]E2BSandbox, error)
	// SetE2BSandboxDue sets the DueAt of a session's E2B record to due
	// (zero: never) if it is still was, and reports whether it did: a
	// record written since (a new end time) keeps its own. It fails with
	// ErrNotFound if there is no such record.
	SetE2BSandboxDue(ctx context.Context, sessionID string, was, due time.Time) (bool, error)

	// BumpTokenGen adds one to the session's TokenGen, at once and
	// atomically, and returns the new generation: every token minted
	// before is dead. It fails with ErrNotFound if there is no session.
	BumpTokenGen(ctx context.Context, id string) (uint64, error)
	// RevokeSessionTokens is the kill switch: at once and atomically, it
	// adds one to the session's TokenGen, as BumpTokenGen does, and sets
	// its TokensRevokedAt to at (a session revoked before keeps its
	// first TokensRevokedAt), and returns the new generation. It fails
	// with ErrNotFound if there is no session, and a zero at fails;
	// either changes nothing.
	RevokeSessionTokens(ctx context.Context, id string, at time.Time) (uint64, error)

	// PutImage inserts im, or replaces every field of the image with the
	// same Name.
	PutImage(ctx context.Context, im Image) error
	// GetImage returns the image with the given name, or ErrNotFound.
	GetImage(ctx context.Context, name string) (Image, error)
	// ListImages returns every image, ordered by Name (bytewise). An empty
	// store gives a slice of length zero.
	ListImages(ctx context.Context) ([]Image, error)
	// DeleteImage removes the image with the given name, or fails with
	// ErrNotFound if there is none.
	DeleteImage(ctx context.Context, name string) error

	// CreateTemplate inserts t at generation 1, whatever t.Gen, and sets
	// t.Gen to 1. It fails with ErrExists if a template with t.Name
	// exists, leaving that template unchanged.
	CreateTemplate(ctx context.Context, t *Template) error
	// UpdateTemplate replaces the template with name t.Name by t, every
	// field, if its stored generation is t.Gen, as UpdateSession does:
	// on success the stored generation, and t.Gen, are t.Gen+1. It fails
	// with ErrConflict if the stored generation is another, and with
	// ErrNotFound if there is no such template; either changes nothing.
	UpdateTemplate(ctx context.Context, t *Template) error
	// GetTemplate returns the template with the given name, or ErrNotFound.
	GetTemplate(ctx context.Context, name string) (Template, error)
	// ListTemplates returns every template, ordered by Name (bytewise). An
	// empty store gives a slice of length zero.
	ListTemplates(ctx context.Context) ([]Template, error)
	// DeleteTemplate removes the template with the given name, all its
	// versions and its secrets, or fails with ErrNotFound if there is
	// none.
	DeleteTemplate(ctx context.Context, name string) error

	// PutTemplateVersion inserts v, or replaces every field of the version
	// with the same Template and Version. It fails with ErrNotFound if no
	// template is named v.Template, creating nothing.
	PutTemplateVersion(ctx context.Context, v TemplateVersion) error
	// ListTemplateVersions returns the versions of the named template,
	// oldest (lowest Version) first. A template without versions, or none
	// of that name, gives a slice of length zero.
	ListTemplateVersions(ctx context.Context, name string) ([]TemplateVersion, error)
	// SwapTemplateVersion makes v the current version of t in one
	// transaction: it writes v as PutTemplateVersion does and replaces the
	// template with name t.Name by t, as UpdateTemplate does (a
	// compare-and-swap on t.Gen, which it advances on success). Either
	// both are written or neither: an ErrConflict writes no version.
	// v.Template must be t.Name.
	SwapTemplateVersion(ctx context.Context, t *Template, v TemplateVersion) error

	// RecordEvent records ev and, in the same transaction, a pending
	// delivery for each of sessions that still has a subscription at
	// commit time, deleting those subscriptions (an event satisfies a
	// subscription once). It returns the event with Seq set and the
	// sessions that got a delivery (in the order given; a session listed
	// twice gets one delivery). If an event with the same Source and ID was
	// recorded before, it changes nothing and returns that event with dup
	// true.
	//
	// The store assigns Seq, ignoring ev.Seq: it increases in the order
	// events are recorded and is never reused. A delivery it creates has
	// State DeliveryPending, no Error, and CreatedAt and UpdatedAt set to
	// ev.Received.
	RecordEvent(ctx context.Context, ev Event, sessions []string) (rec Event, delivered []string, dup bool, err error)
	// GetEvent returns the event with the given Seq, or ErrNotFound.
	GetEvent(ctx context.Context, seq int64) (Event, error)

	// PutSubscription inserts the subscription of s.SessionID, or replaces
	// every field of the one it has.
	PutSubscription(ctx context.Context, s Subscription) error
	// GetSubscription returns the subscription of the given session, or
	// ErrNotFound.
	GetSubscription(ctx context.Context, sessionID string) (Subscription, error)
	// DeleteSubscription removes the subscription of the given session, or
	// fails with ErrNotFound if it has none.
	DeleteSubscription(ctx context.Context, sessionID string) error
	// ListSubscriptions returns every subscription, ordered by CreatedAt
	// and then by SessionID (bytewise). An empty store gives a slice of
	// length zero.
	ListSubscriptions(ctx context.Context) ([]Subscription, error)

	// ListDeliveries returns deliveries in the given state ("" for all),
	// ordered by EventSeq then SessionID (bytewise).
	ListDeliveries(ctx context.Context, state string) ([]Delivery, error)
	// UpdateDelivery replaces the State, Error and UpdatedAt of the
	// delivery (d.EventSeq, d.SessionID), leaving its CreatedAt; it fails
	// with ErrNotFound if there is none, creating nothing. It is no
	// compare-and-swap: a session's deliveries are written only by the
	// server holding their claim (see Claim; package session).
	UpdateDelivery(ctx context.Context, d Delivery) error
	// DeleteSessionTriggers removes a session's subscription and its
	// deliveries (when the session is removed); it is no error if there
	// are none. Events stay.
	DeleteSessionTriggers(ctx context.Context, sessionID string) error

	// PutHookSecret sets the secret of the hook with the given name,
	// creating the hook or replacing its secret.
	PutHookSecret(ctx context.Context, name string, secret []byte) error
	// GetHookSecret returns the secret of the named hook, or ErrNotFound.
	GetHookSecret(ctx context.Context, name string) ([]byte, error)
	// ListHooks returns the name of every hook, sorted (bytewise). An empty
	// store gives a slice of length zero.
	ListHooks(ctx context.Context) ([]string, error)
	// DeleteHook removes the named hook, or fails with ErrNotFound if there
	// is none.
	DeleteHook(ctx context.Context, name string) error

	// PutUser inserts u, or replaces every field of the user with the same
	// ID. Names are unique, and so are OIDC identities: it fails with
	// ErrExists, changing nothing, if another user has u.Name, or
	// u.Issuer and u.Subject. Issuer and Subject are both set (an OIDC
	// user) or both empty (a local user); a user with one of them fails
	// and changes nothing. Putting an OIDC user deletes the RemovedUser
	// record of its Issuer and Subject, if any, in the same transaction.
	PutUser(ctx context.Context, u User) error
	// GetUser returns the user with the given id, or ErrNotFound.
	GetUser(ctx context.Context, id string) (User, error)
	// GetUserByName returns the user with the given name, or ErrNotFound.
	GetUserByName(ctx context.Context, name string) (User, error)
	// GetUserBySubject returns the user with the given OIDC issuer and
	// subject, or ErrNotFound. Empty ones find no user.
	GetUserBySubject(ctx context.Context, issuer, subject string) (User, error)
	// ListUsers returns every user, ordered by Name (bytewise). An empty
	// store gives a slice of length zero.
	ListUsers(ctx context.Context) ([]User, error)
	// DeleteUser removes the user with the given id, its team
	// memberships and its secrets and, in the same transaction, revokes
	// its tokens: each
	// that is not revoked yet gets RevokedAt at. The tokens stay, listed
	// under the gone user's id, so that a name given to a new user later
	// gains none of them. An OIDC user (with Issuer and Subject) leaves a
	// RemovedUser record of them, RemovedAt at, replacing any before. It
	// fails with ErrNotFound if there is no such user, and a zero at
	// fails; either changes nothing.
	DeleteUser(ctx context.Context, id string, at time.Time) error
	// GetRemovedUser returns the RemovedUser record of the OIDC issuer
	// and subject, or ErrNotFound if there is none (never removed, or
	// put back since).
	GetRemovedUser(ctx context.Context, issuer, subject string) (RemovedUser, error)
	// GetRemovedUserByName returns the RemovedUser record of the given
	// name removed last (latest RemovedAt, then the greatest ID), or
	// ErrNotFound if there is none.
	GetRemovedUserByName(ctx context.Context, name string) (RemovedUser, error)

	// AddTeamMember makes the user with the given id a member of team.
	// Adding a member again is no error and changes nothing. It fails
	// with ErrNotFound if there is no such user, and an empty team fails.
	AddTeamMember(ctx context.Context, userID, team string) error
	// RemoveTeamMember ends the user's membership of team, or fails with
	// ErrNotFound if it is not a member.
	RemoveTeamMember(ctx context.Context, userID, team string) error
	// TeamsOf returns the teams of the user with the given id, sorted
	// (bytewise). A user without teams, or no user, gives a slice of
	// length zero.
	TeamsOf(ctx context.Context, userID string) ([]string, error)

	// PutToken inserts t. A token is written once; RevokeToken and
	// TouchToken are the only changes to it. It fails with ErrExists if a
	// token has t.ID or t.Hash, and with ErrNotFound if no user has
	// t.UserID; either changes nothing.
	PutToken(ctx context.Context, t Token) error
	// GetToken returns the token with the given id, or ErrNotFound.
	GetToken(ctx context.Context, id string) (Token, error)
	// GetTokenByHash returns the token whose secret hashes to hash, or
	// ErrNotFound. Revoked and expired tokens are returned too, as they
	// are: the caller decides what they are worth (and can say why it
	// refuses one).
	GetTokenByHash(ctx context.Context, hash [32]byte) (Token, error)
	// ListTokens returns the tokens of the user with the given id ("" for
	// every token), revoked and expired ones included, ordered by
	// CreatedAt and then by ID (bytewise). None gives a slice of length
	// zero.
	ListTokens(ctx context.Context, userID string) ([]Token, error)
	// RevokeToken sets the RevokedAt of the token with the given id to at.
	// A token revoked before keeps its RevokedAt, and that is no error. It
	// fails with ErrNotFound if there is no such token, and a zero at
	// fails; either changes nothing.
	RevokeToken(ctx context.Context, id string, at time.Time) error
	// TouchToken sets the LastUsedAt of the token with the given id to at
	// if at is later (it never moves back). It fails with ErrNotFound if
	// there is no such token.
	TouchToken(ctx context.Context, id string, at time.Time) error

	// PutSecret inserts s, or replaces the secret with the same
	// OwnerKind, Owner and Name: every field but CreatedAt, which keeps
	// the first put's (s.CreatedAt is stored only by an insert). An
	// OwnerKind other than SecretOwnerUser, SecretOwnerTeam and
	// SecretOwnerTemplate, or an empty Owner or Name, fails and changes
	// nothing. The store keeps Sealed as it is given: sealing is the
	// caller's (package secret), and no plaintext reaches the store.
	PutSecret(ctx context.Context, s Secret) error
	// GetSecret returns the secret (ownerKind, owner, name), or
	// ErrNotFound.
	GetSecret(ctx context.Context, ownerKind, owner, name string) (Secret, error)
	// ListSecrets returns the secrets of one owner (ownerKind and owner
	// both set), of every owner of a kind (owner ""), or every secret
	// (both ""), ordered by OwnerKind, Owner and Name (bytewise). None
	// gives a slice of length zero. An owner without a kind fails.
	ListSecrets(ctx context.Context, ownerKind, owner string) ([]Secret, error)
	// DeleteSecret removes the secret (ownerKind, owner, name), or fails
	// with ErrNotFound if there is none.
	//
	// Secrets also go with their owner: DeleteUser removes the user's
	// and DeleteTemplate the template's, in the same transaction, so
	// that a later user or template of the same name gains none of them.
	// A team's stay when its last member leaves (a team is a name that
	// members share, and the next member finds them again); an admin
	// removes them with DeleteSecret.
	DeleteSecret(ctx context.Context, ownerKind, owner, name string) error

	// Claim takes, or renews, the lease named key for owner, for ttl
	// from now by the store's clock, and reports whether owner holds it
	// now. A lease is free when no one holds it or its holder's ttl has
	// passed (a holder that died lets go by expiring); owner renews its
	// own by claiming it again. Of owners claiming one free lease at
	// once, exactly one gets it. Empty key or owner, or ttl <= 0, fail.
	//
	// Leases are how servers sharing a store split the work that one of
	// them must do alone (a pending delivery, a timeout, a template
	// build, a pool refill): the work is done only by the lease's holder,
	// and must be safe to do again by the next holder should the first
	// die midway (the lease expires; the work is not rolled back).
	Claim(ctx context.Context, key, owner string, ttl time.Duration) (bool, error)
	// Release ends owner's lease named key, so that another owner may
	// claim it at once. A lease owner does not hold (never claimed,
	// released, or expired and taken by another) is left as it is, and
	// that is no error.
	Release(ctx context.Context, key, owner string) error

	// CreateNode inserts n at generation 1, whatever n.Gen, and sets
	// n.Gen to 1. It fails with ErrExists if a node has n.ID or n.Name,
	// changing nothing.
	CreateNode(ctx context.Context, n *Node) error
	// UpdateNode replaces the node with id n.ID by n, every field, if its
	// stored generation is n.Gen, as UpdateSession does: on success the
	// stored generation, and n.Gen, are n.Gen+1. It fails with
	// ErrConflict if the stored generation is another, with ErrNotFound
	// if there is no such node, and with ErrExists if another node has
	// n.Name; any of them changes nothing.
	UpdateNode(ctx context.Context, n *Node) error
	// GetNode returns the node with the given id, or ErrNotFound.
	GetNode(ctx context.Context, id string) (Node, error)
	// GetNodeByName returns the node with the given name, or ErrNotFound.
	GetNodeByName(ctx context.Context, name string) (Node, error)
	// GetNodeByCredential returns the node whose CredentialHash is hash,
	// or ErrNotFound; an empty hash finds no node (the embedded node has
	// none).
	GetNodeByCredential(ctx context.Context, hash string) (Node, error)
	// ListNodes returns every node, ordered by Name (bytewise). An empty
	// store gives a slice of length zero.
	ListNodes(ctx context.Context) ([]Node, error)
	// DeleteNode removes the node with the given id, or fails with
	// ErrNotFound if there is none. Its sessions are the caller's to
	// deal with first.
	DeleteNode(ctx context.Context, id string) error
	// HeartbeatNode records that the node with the given id is alive at
	// at with capacity c: it sets HeartbeatAt and Capacity and clears
	// Dead, at once, with no compare-and-swap and without advancing Gen
	// (heartbeats are frequent and must not make an operator's cordon,
	// read before, conflict). It fails with ErrNotFound if there is no
	// such node, changing nothing.
	HeartbeatNode(ctx context.Context, id string, at time.Time, c NodeCapacity) error

	// Close releases the store's resources. Writes that returned before it
	// are durable.
	Close() error
}

// SessionCursor is a position in the list of sessions (ListSessionsAfter):
// that of the session with this CreatedAt and ID. The zero value is the
// list's start.
type SessionCursor struct {
	CreatedAt time.Time
	ID        string
}

// SessionUsage is what the sessions that one node holds in one state add
// up to (Store.SessionUsage).
type SessionUsage struct {
	// Node is Session.Node: "" for sessions from before nodes.
	Node  string
	State string
	// Sessions counts them; MemoryMiB and CPUs sum theirs.
	Sessions  int
	MemoryMiB int64
	CPUs      int64
}

// E2BSandbox is what the E2B-compatible API (package e2b) keeps of a
// session it made, beyond the session itself: the sandbox's template
// name, metadata, environment and end time, in Record.
type E2BSandbox struct {
	SessionID string
	// Record is package e2b's description of the sandbox (opaque to the
	// store).
	Record []byte
	// DueAt is when the end-time sweep looks at the sandbox next (its
	// end time while it runs); zero: never.
	DueAt time.Time
}

// Checkpoint is the record of one checkpoint of a running session: its
// whole machine saved while it ran on (package session).
type Checkpoint struct {
	SessionID string
	Name      string
	CreatedAt time.Time
	// Bytes is the disk space the checkpoint's own files take.
	Bytes int64
	// PauseMillis is how long the session's guest was paused to take it.
	PauseMillis int64
	// Manifest is package session's description of the checkpoint's
	// files (opaque to the store).
	Manifest []byte
}

// Session is the stored record of one session: its public fields (see
// api.Session) plus what the server needs to find its VM again.
type Session struct {
	ID string
	// Gen is the record's generation: 1 when created, one more at each
	// UpdateSession, which succeeds only from a copy of the current
	// generation (see Store). BumpTokenGen and RevokeSessionTokens, which
	// change only TokenGen and TokensRevokedAt at once and atomically,
	// leave it as it is.
	Gen       int64
	State     string
	Image     string
	MemoryMiB int
	CPUs      int
	Env       map[string]string
	Accel     string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Error says why a session is failed.
	Error string
	// BootMillis is how long the VM took from spawn to the agent's first answer.
	BootMillis int64
	// Handle is the VMM driver's versioned, opaque description of the running
	// VM (JSON), used to re-adopt it after a server restart.
	Handle []byte

	// IdleTimeout parks the session after that long without API activity;
	// zero means the server's default.
	IdleTimeout time.Duration
	// NoAutoWake refuses exec and file calls on a parked session instead of
	// waking it first.
	NoAutoWake bool
	// Template names the template the session was cloned from, if any,
	// and TemplateVersion which of its versions.
	Template        string
	TemplateVersion int
	// Snapshot is the session package's versioned description of the
	// session's parked snapshot (JSON); empty while the session has none.
	Snapshot []byte

	// Parent is the session a fork was made from, and FromCheckpoint the
	// parent's checkpoint it was restored from; "" for a session that is
	// no fork.
	Parent         string
	FromCheckpoint string

	// Owner is the id of the user the session acts for: the one whose
	// request created it (a clone's creator, not its template's owner),
	// or OwnerAdmin for the bootstrap admin token; "" for none.
	Owner string
	// Agent is the name of the agent the session runs (--agent at
	// create); "" for none.
	Agent string
	// TokenGen is the session's identity-token generation: a session
	// token is good only while the generation it carries is this one.
	// CreateSession stores it; UpdateSession leaves the stored one as it
	// is (a stale copy must never bring dead tokens back), and only
	// BumpTokenGen changes it.
	TokenGen uint64
	// TokensRevokedAt is when the session's identity was revoked (the
	// kill switch); zero: it was not. Once set, no token of the session
	// is minted or honoured again, for the rest of its life. Like
	// TokenGen, CreateSession stores it, UpdateSession leaves the stored
	// one as it is, and only RevokeSessionTokens sets it.
	TokensRevokedAt time.Time
	// Allow is the egress the session's own request allowed: rules in
	// the text form of egress.Rule ("github.com", "*.pypi.org:443"…);
	// its template's rules and the operator's add to them. Empty: none.
	Allow []string

	// StoredManifest is the ID of the manifest (package cas) of the
	// session's parked snapshot in the object store, set once every
	// chunk it names and the manifest itself are durable there; "" while
	// the snapshot is not stored (not parked, not yet uploaded, or woken
	// since). StoredBytes is what that snapshot's upload added to the
	// object store (new chunks, compressed, and the manifest).
	StoredManifest string
	StoredBytes    int64

	// Node is the id of the node (see Node) that holds the session: runs
	// its VM, or keeps its parked snapshot's files. "" for records made
	// before nodes existed, which the embedded node holds.
	Node string

	// IdempotencyKey and RequestHash, written by CreateSession only (and
	// never read back into a Session), are the Idempotency-Key the
	// create came with ("" for none) and the digest of what it asked:
	// CreateSession records them as a SessionKey.
	IdempotencyKey string
	RequestHash    string
}

// SessionKey is the record of a create made with an idempotency key:
// Owner's Key, unique per owner, names the session it made and the
// digest of what it asked, so that a retry with the key answers that
// session rather than making another.
type SessionKey struct {
	Owner       string
	Key         string
	SessionID   string
	RequestHash string
}

// OwnerAdmin is the Owner of the sessions and templates made with the
// server's bootstrap admin token, which is no user. No user's id takes
// this form (user ids start "u_"), and policies see it as the user
// Cove::User::"admin" of kind admin. Sessions and templates from before
// owners were recorded have it too.
const OwnerAdmin = "admin"

// Template is the stored record of one template: a booted, set-up session
// saved as a snapshot that sessions are cloned from.
type Template struct {
	Name string
	// Gen is the record's generation, as Session.Gen: 1 when created,
	// one more at each UpdateTemplate or SwapTemplateVersion.
	Gen       int64
	State     string // "building", "ready", "failed"
	Image     string
	MemoryMiB int
	CPUs      int
	Env       map[string]string
	Setup     []string // shell commands run once, in order
	Start     string   // shell command left running in the snapshot
	Pool      int      // warm clones kept ready
	Error     string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Snapshot is the session package's versioned description of the
	// template's snapshot (JSON): the current version's.
	Snapshot []byte

	// Repo is the URL of the git repository the template is built from
	// ("" for none), Branch the branch it follows and RepoDir where the
	// checkout lives in the guest.
	Repo    string
	Branch  string
	RepoDir string
	// Version is the current version (1 for the first build), Commit the
	// commit it was built from ("" without a repo).
	Version int
	Commit  string

	// Owner is the id of the user who created the template, or
	// OwnerAdmin (see Session.Owner); Agent the agent name given at its
	// create, "" for none. Rebuilds keep both.
	Owner string
	Agent string
	// Allow is the egress the template's sessions are allowed, on top of
	// their own (see Session.Allow).
	Allow []string
}

// TemplateVersion is one build of a template.
type TemplateVersion struct {
	Template string
	Version  int
	State    string // "building", "ready", "failed", "removed"
	Commit   string
	// Base is the version this one was built from (its snapshot restored
	// and updated), 0 for a build from a fresh boot.
	Base int
	// Reason says what asked for the build ("create", "push DELIVERY",
	// "rebuild", "restart").
	Reason string
	Error  string
	// Log is what the build's commands wrote (its tail: see
	// session.BuildLogBytes), a good build's as a failed one's; "" for a
	// build from before it was kept or made from a checkpoint.
	Log         string
	BuildMillis int64
	CreatedAt   time.Time
	UpdatedAt   time.Time
	// Snapshot is as in Template: the version's machine.
	Snapshot []byte
	// StoredManifest is the ID of the manifest (package cas) of the
	// version's files (RAM file, device state, disk) in the object
	// store, set once they are durable there; "" while they are not. Its
	// clones' snapshots rest on it (cas.Manifest.Bases).
	StoredManifest string
}

// Template version states.
const (
	VersionBuilding = "building"
	VersionReady    = "ready"
	VersionFailed   = "failed"
	VersionRemoved  = "removed"
)

// Image is the stored record of one built image.
type Image struct {
	Name string
	// Key is the hash of everything the image was built from.
	Key string
	// Dir is the directory holding the image files.
	Dir         string
	SizeBytes   int64
	CreatedAt   time.Time
	BuildMillis int64
	// StoredManifest is the ID of the manifest (package cas) of the
	// image's files as built with Key in the object store, set once they
	// are durable there; "" while they are not.
	StoredManifest string
}

// Event is a recorded incoming event (a webhook delivery).
type Event struct {
	Seq    int64  // assigned by RecordEvent: increasing in arrival order
	Source string // "github" or a hook name, or "cove" for timeouts
	ID     string // delivery id, unique per Source
	Name   string
	Fields map[string]string
	Body   []byte
	// Received is when the event arrived.
	Received time.Time
}

// Subscription is a parked session waiting for events.
type Subscription struct {
	SessionID string
	Until     []string  // trigger expressions, as written
	Deadline  time.Time // zero: no timeout
	CreatedAt time.Time
}

// Delivery is an event due to a session.
type Delivery struct {
	EventSeq  int64
	SessionID string
	State     string // "pending", "delivered", "failed"
	Error     string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Delivery states.
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	DeliveryFailed    = "failed"
)

// User is one principal that signs in: an engineer, a service account (CI,
// a bot) or an admin. A local user is made by an admin and has no OIDC
// identity; an OIDC user has the issuer and subject of its ID tokens.
type User struct {
	ID   string
	Name string // unique
	Kind string // UserEngineer, UserService or UserAdmin
	// Issuer and Subject are the user's OIDC identity (the "iss" and
	// "sub" of its ID tokens), unique together; both empty for a local
	// user.
	Issuer    string
	Subject   string
	CreatedAt time.Time
}

// RemovedUser records that an OIDC user was removed (DeleteUser), so
// that its issuer and subject cannot sign in and make a user again until
// an admin puts a user with them back (PutUser).
type RemovedUser struct {
	Issuer  string
	Subject string
	// ID and Name are the removed user's.
	ID        string
	Name      string
	RemovedAt time.Time
}

// Kinds of user.
const (
	UserEngineer = "engineer"
	UserService  = "service"
	UserAdmin    = "admin"
)

// Token is an API token: a bearer secret that acts for its user. The store
// keeps the SHA-256 hash of the secret, never the secret.
type Token struct {
	ID     string
	Name   string
	UserID string
	// Hash is the SHA-256 of the whole secret; unique.
	Hash [32]byte
	// Scopes narrow what the token may do (their meaning is the policy's).
	Scopes    []string
	CreatedAt time.Time
	// ExpiresAt is when the token stops working; zero: never.
	ExpiresAt time.Time
	// RevokedAt is when the token was revoked; zero: it is not.
	RevokedAt time.Time
	// LastUsedAt is when the token last authenticated a request, to
	// about a minute; zero: never.
	LastUsedAt time.Time
}

// Secret owner kinds: whose a secret is, and so which sessions' requests
// carry it (see package secret).
const (
	// SecretOwnerUser: the Owner is a user's id.
	SecretOwnerUser = "user"
	// SecretOwnerTeam: the Owner is a team's name.
	SecretOwnerTeam = "team"
	// SecretOwnerTemplate: the Owner is a template's name.
	SecretOwnerTemplate = "template"
)

// Secret is a credential that the egress proxy adds, as a header, to the
// requests that its owner's sessions make to its hosts. Its value is
// sealed (package secret): the store holds only ciphertext, bound to the
// record's OwnerKind, Owner and Name.
type Secret struct {
	// Name is unique per owner.
	Name string
	// OwnerKind is SecretOwnerUser, SecretOwnerTeam or
	// SecretOwnerTemplate, and Owner the user's id, the team's name or
	// the template's name.
	OwnerKind string
	Owner     string
	// Hosts are where the secret may go: exact host names or
	// "*.suffix" patterns.
	Hosts []string
	// Header is the header template, "Authorization: Bearer {{value}}".
	Header string
	// Sealed is the value, encrypted.
	Sealed    []byte
	CreatedAt time.Time
	UpdatedAt time.Time
}

// LogValue keeps the sealed bytes out of logs: they are ciphertext, but
// a log is no place for them either.
func (s Secret) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("name", s.Name),
		slog.String("owner_kind", s.OwnerKind),
		slog.String("owner", s.Owner),
		slog.Any("hosts", s.Hosts),
	)
}

// NodeCapacity is what a node reports about its host (package nodeinfo
// probes it).
type NodeCapacity struct {
	VCPUs     int   `json:"vcpus"`
	MemoryMiB int64 `json:"memory_mib"`
	// DiskBytes is the free bytes under the node's COVE_HOME.
	DiskBytes int64 `json:"disk_bytes"`
	// Accel is "kvm" or "tcg".
	Accel    string   `json:"accel"`
	CPUModel string   `json:"cpu_model"`
	CPUFlags []string `json:"cpu_flags"`
	// QEMUVersion and KernelVersion (the host's, uname -r) matter because
	// a snapshot restores only on a compatible machine.
	QEMUVersion   string `json:"qemu_version"`
	KernelVersion string `json:"kernel_version"`
	// FenceAfterMS is how long, in milliseconds, the node goes without a
	// heartbeat's answer before it freezes its VMs (0: it does not: a
	// store no other node shares, or a node that runs no sessions). The
	// sweeper waits at least twice as long before it marks the node
	// dead, whatever its own grace, so that a node given another
	// --node-grace than the servers' has frozen its VMs before their
	// sessions run elsewhere.
	FenceAfterMS int64 `json:"fence_after_ms,omitempty"`
}

// MaxFenceAfter bounds NodeCapacity.FenceAfterMS: a node that says it
// waits longer is refused at its join and heartbeat (it would hold its
// sessions from other nodes that long).
const MaxFenceAfter = time.Hour

// FenceAfter is c.FenceAfterMS as a duration.
func (c NodeCapacity) FenceAfter() time.Duration {
	return time.Duration(c.FenceAfterMS) * time.Millisecond
}

// NewNodeID is a new, random node id: "node-" and 12 lowercase base32
// characters; the embedded node and joining agents both take theirs here.
func NewNodeID() string { return "node-" + strings.ToLower(rand.Text()[:12]) }

// Node is one VM host: the embedded node of a `cove server`, or a `cove
// node` agent that joined.
type Node struct {
	// ID is "node-" and 12 random lowercase characters; never reused.
	ID string
	// Name is unique: a node that joins again with the same name gets
	// the same record.
	Name     string
	Labels   map[string]string
	Capacity NodeCapacity
	// Admin is set by an operator: "" (schedulable), NodeCordoned or
	// NodeDraining.
	Admin string
	// Dead is set by the sweeper once HeartbeatAt is older than the
	// grace; a heartbeat clears it.
	Dead bool
	// Embedded marks the node inside a `cove server` process.
	Embedded bool
	// CredentialHash is the hex SHA-256 of the node's credential; "" for
	// the embedded node, which has none.
	CredentialHash string
	// URL is where the other API servers reach the node's sessions to
	// route a call about one of them there: for an embedded node, its
	// server's --advertise-url; for a remote node that serves sessions,
	// the advertise URL of the server holding its control connection,
	// which relays the call over it. "" for a server that advertises
	// none and a remote node that runs no sessions.
	URL string
	// E2BURL is where the other API servers reach the E2B API
	// (--e2b-listen) of an embedded node's server (its
	// --e2b-advertise-url), to route an E2B call about one of its
	// sandboxes there; for a remote node that serves sessions, that of
	// the server holding its control connection, which relays the call
	// over it; "" for none.
	E2BURL      string
	JoinedAt    time.Time
	HeartbeatAt time.Time
	// Gen is the record's generation, as Session.Gen. HeartbeatNode
	// leaves it as it is.
	Gen int64
}

// Node admin states (Node.Admin); "" is schedulable.
const (
	NodeCordoned = "cordoned"
	NodeDraining = "draining"
)

// Node shown states (api.Node.State), from NodeState.
const (
	NodeReady = "ready"
	NodeDead  = "dead"
)

// NodeChanger is what ChangeNode needs of a store.
type NodeChanger interface {
	GetNode(ctx context.Context, id string) (Node, error)
	UpdateNode(ctx context.Context, n *Node) error
}

// ChangeNode applies change to node id's record and stores it,
// reading it again and reapplying change when the compare-and-swap
// loses to another writer (a few times). change reports whether it
// changed anything: false stores nothing.
func ChangeNode(ctx context.Context, st NodeChanger, id string, change func(*Node) bool) error {
	for range 5 {
		n, err := st.GetNode(ctx, id)
		if err != nil {
			return err
		}
		if !change(&n) {
			return nil
		}
		err = st.UpdateNode(ctx, &n)
		if errors.Is(err, ErrConflict) {
			continue
		}
		return err
	}
	return fmt.Errorf("node %s: changed by others while being set: %w", id, ErrConflict)
}

// NodeState is the state a node is shown in: NodeDead if Dead, else its
// Admin (NodeDraining, NodeCordoned) if set, else NodeReady.
func NodeState(n Node) string {
	switch {
	case n.Dead:
		return NodeDead
	case n.Admin != "":
		return n.Admin
	}
	return NodeReady
}

// LogValue keeps the credential hash out of logs.
func (n Node) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("id", n.ID),
		slog.String("name", n.Name),
		slog.String("state", NodeState(n)),
	)
}

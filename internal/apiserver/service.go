package apiserver

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/identity"
	"github.com/cove-dev/cove/internal/session"
)

// Sessions is what the API server asks of the session manager, templates
// included (a template is a saved session that sessions are cloned from,
// so the same manager keeps both). Every method
// returns *api.Error (possibly wrapped) for failures a client caused or
// should see (unknown id → CodeNotFound, bad request → CodeInvalid, guest
// not answering → CodeUnavailable/CodeTimeout); anything else is a 500.
// Pager is what a Sessions that pages its list also has
// (*session.Manager does): GET /v1/sessions?limit=N reads one page of the
// store, not the whole list. A Sessions without it answers a paged list
// with one page of all its sessions.
type Pager interface {
	// ListPage returns at most limit sessions after the position the
	// page token after names ("" for the first page), and the next
	// page's token ("" after the last); a bad token or limit is
	// CodeInvalid.
	ListPage(ctx context.Context, after string, limit int) ([]api.Session, string, error)
}

// KeyedCreator is a Sessions that honours a create's Idempotency-Key
// (session.Manager.CreateKeyed): replayed is true when the answer is the
// session an earlier create with owner's key made.
type KeyedCreator interface {
	CreateKeyed(ctx context.Context, owner, key string, req api.CreateSessionRequest) (sess api.Session, replayed bool, err error)
}

type Sessions interface {
	// Create boots a session for owner (the id of the user it acts for,
	// identity.Principal.Owner of the request's principal) and returns
	// once its agent answers.
	Create(ctx context.Context, owner string, req api.CreateSessionRequest) (api.Session, error)
	Get(ctx context.Context, id string) (api.Session, error)
	List(ctx context.Context) ([]api.Session, error)
	// Delete stops the VM and removes the session's files and record.
	Delete(ctx context.Context, id string) error

	// Exec starts a command in the session's guest. The caller must call
	// Wait (or cancel ctx) to release it.
	Exec(ctx context.Context, id string, req api.ExecRequest) (Process, error)

	// Open streams a regular file's content.
	Open(ctx context.Context, id, path string) (io.ReadCloser, error)
	// WriteFile creates or replaces a regular file (parents are created).
	WriteFile(ctx context.Context, id, path string, mode uint32, r io.Reader) error
	Stat(ctx context.Context, id, path string) (api.FileInfo, error)
	ListDir(ctx context.Context, id, path string) ([]api.FileInfo, error)
	Mkdir(ctx context.Context, id, path string) error
	// Remove removes a path; a directory is removed with its contents.
	Remove(ctx context.Context, id, path string) error
	// GetTar streams a tar archive of path (file or directory); the entries
	// are named relative to path's parent (so "dir/a", "dir/b" for path /x/dir).
	GetTar(ctx context.Context, id, path string) (io.ReadCloser, error)
	// PutTar extracts a tar archive into the directory dir (created if
	// missing). Entries that escape dir are rejected.
	PutTar(ctx context.Context, id, dir string, r io.Reader) error

	// Park saves a running session's whole VM to disk, ends its process and
	// returns the session, parked. Parking a parked session returns it as
	// it is; a session in any other state is CodeConflict.
	Park(ctx context.Context, id string) (api.Session, error)
	// ParkUntil is Park that also subscribes the session to events: it
	// wakes on the first event matching any of until (trigger expressions,
	// already checked with trigger.Parse), or with a timeout event once
	// timeout has passed (zero: never). until and timeout replace any
	// earlier subscription; the answer's Waiting shows them.
	ParkUntil(ctx context.Context, id string, until []string, timeout time.Duration) (api.Session, error)
	// Revoke invalidates every identity token the session was given, at
	// once, without stopping it (the kill switch), and returns the
	// session; an unknown id is CodeNotFound.
	Revoke(ctx context.Context, id string) (api.Session, error)
	// Wake restores a parked session and returns it once its agent
	// answers. Waking a running session returns it as it is; a session in
	// any other state is CodeConflict.
	Wake(ctx context.Context, id string) (api.Session, error)
	// WakeFromLastSnapshot brings a lost or failed session (or a parked
	// one whose latest snapshot is on a dead node only) back from its
	// last stored snapshot; a session in another state, or without one,
	// is CodeConflict.
	WakeFromLastSnapshot(ctx context.Context, id string) (api.Session, error)

	// CreateCheckpoint saves a running session's whole machine while it
	// runs on; a parked session is CodeConflict, a name in use too, a
	// bad name CodeInvalid.
	CreateCheckpoint(ctx context.Context, id string, req api.CheckpointRequest) (api.Checkpoint, error)
	// ListCheckpoints lists a session's checkpoints, oldest first.
	ListCheckpoints(ctx context.Context, id string) ([]api.Checkpoint, error)
	// GetCheckpoint returns one; an unknown name is CodeNotFound.
	GetCheckpoint(ctx context.Context, id, name string) (api.Checkpoint, error)
	// DeleteCheckpoint removes one; an unknown name is CodeNotFound.
	DeleteCheckpoint(ctx context.Context, id, name string) error
	// Rollback puts a running, parked or failed session back to its checkpoint
	// and returns it running; an unknown name is CodeNotFound and
	// changes nothing.
	Rollback(ctx context.Context, id, name string) (api.Session, error)
	// Fork makes sessions restored from a checkpoint of the session (or
	// one taken now) and returns them running.
	Fork(ctx context.Context, id string, req api.ForkRequest) ([]api.Session, error)

	// CreateTemplate boots the template's image, runs its setup, starts
	// its start command and saves the machine, for owner (as in Create);
	// it returns once the template is ready (seconds to minutes). A name
	// in use is CodeConflict; a failed setup step is an error with its
	// output.
	CreateTemplate(ctx context.Context, owner string, req api.CreateTemplateRequest) (api.Template, error)
	// GetTemplate returns one template; an unknown name is CodeNotFound.
	GetTemplate(ctx context.Context, name string) (api.Template, error)
	ListTemplates(ctx context.Context) ([]api.Template, error)
	// DeleteTemplate removes a template and its warm pool. A template that
	// sessions were cloned from (and still exist) is CodeConflict.
	DeleteTemplate(ctx context.Context, name string) error
	// TemplateVersions lists a template's versions, oldest first; an
	// unknown name is CodeNotFound.
	TemplateVersions(ctx context.Context, name string) ([]api.TemplateVersion, error)
	// RebuildTemplate queues a build of the template's next version from
	// its current one and returns the template at once; an unknown name is
	// CodeNotFound, a template that is not ready CodeConflict.
	RebuildTemplate(ctx context.Context, name string) (api.Template, error)
	// SetTemplatePool sets how many ready clones the template's warm pool
	// keeps and returns the template; a size outside 0..64 is
	// CodeInvalid, an unknown name CodeNotFound.
	SetTemplatePool(ctx context.Context, name string, size int) (api.Template, error)
}

// Images is what the API server asks of the image builder.
type Images interface {
	List(ctx context.Context) ([]api.Image, error)
	// Known reports whether name is an image the builder knows how to
	// build: nil, or a CodeNotFound error that says which it knows.
	Known(name string) error
	// Build builds the named image, or reuses the cached one with the same
	// inputs, calling progress with human-readable steps as it goes.
	Build(ctx context.Context, name string, progress func(msg string)) (api.Image, error)
}

// Hooks receives webhook deliveries; *trigger.Receiver is one.
type Hooks interface {
	// ServeHook answers one delivery to the named hook, checking its
	// signature, and writes the whole answer itself.
	ServeHook(w http.ResponseWriter, r *http.Request, hook string)
}

// HookSecrets keeps the HMAC secrets of the webhooks. Unknown names are
// errors wrapping store.ErrNotFound.
type HookSecrets interface {
	// PutHookSecret creates or replaces the named hook's secret.
	PutHookSecret(ctx context.Context, name string, secret []byte) error
	// ListHooks returns the names of the hooks that have a secret.
	ListHooks(ctx context.Context) ([]string, error)
	// DeleteHook removes the named hook's secret.
	DeleteHook(ctx context.Context, name string) error
}

// Authenticator says whom a bearer credential other than the admin token
// names; *identity.Authenticator is one. Its refusals are errors for which
// identity.IsRefusal holds (answered 401 with their reason); any other
// error is the server's (a store that is unavailable: 503).
type Authenticator interface {
	Authenticate(ctx context.Context, bearer string) (identity.Principal, error)
}

// Identities keeps users and their API tokens; *identity.Directory is
// one. Every method returns *api.Error (possibly wrapped) for failures a
// client caused (malformed request → CodeInvalid, unknown user or token →
// CodeNotFound, name in use → CodeConflict); anything else is a 500, or a
// 503 for a store that is unavailable.
type Identities interface {
	AddUser(ctx context.Context, req api.CreateUserRequest) (api.User, error)
	ListUsers(ctx context.Context) ([]api.User, error)
	// RemoveUser removes the named user and revokes its tokens.
	RemoveUser(ctx context.Context, name string) error
	// MintToken mints a token for req.User, which the server sets
	// (the caller's own name when the request names none), within the
	// limits of caller's credential: a scoped caller mints only a token
	// within its scopes and its expiry (else CodeForbidden); the answer
	// holds the secret, which nothing keeps.
	MintToken(ctx context.Context, caller identity.Principal, req api.CreateTokenRequest) (api.CreatedToken, error)
	// ListTokens lists the named user's tokens ("" for all) without
	// their secrets.
	ListTokens(ctx context.Context, user string) ([]api.Token, error)
	// RevokeToken revokes a token and returns it.
	RevokeToken(ctx context.Context, id string) (api.Token, error)
	// ListTeams lists every team with its members' names.
	ListTeams(ctx context.Context) ([]api.Team, error)
	// AddTeamMember puts the named user in team (idempotent).
	AddTeamMember(ctx context.Context, team, user string) error
	// RemoveTeamMember takes the named user out of team; an unknown
	// user, or one not in it, is CodeNotFound.
	RemoveTeamMember(ctx context.Context, team, user string) error
}

// Secrets keeps the secrets that the egress proxy adds to sessions'
// requests; *secret.Keeper is one. Each names whose secrets with an
// api.SecretOwner (the server fills in the caller's own user when a
// request names none). Every method returns *api.Error (possibly
// wrapped) for failures a client caused (a bad name, header, host or
// value → CodeInvalid, an unknown owner or secret → CodeNotFound);
// anything else is a 500, or a 503 for a store that is unavailable. No
// answer and no error holds a secret's value.
type Secrets interface {
	// Put validates req, seals its value and creates or replaces the
	// named secret of the owner req names; it answers the secret
	// without its value.
	Put(ctx context.Context, name string, req api.PutSecretRequest) (api.Secret, error)
	// List lists owner's secrets (owner.All: everyone's) without values.
	List(ctx context.Context, owner api.SecretOwner) ([]api.Secret, error)
	// Delete removes owner's named secret.
	Delete(ctx context.Context, name string, owner api.SecretOwner) error
}

// Process is one running command in a guest (declared by the session
// manager, which returns it).
type Process = session.Process

// ExitStatus is how a command ended.
type ExitStatus = api.ExitStatus

// Package api holds cove's public REST types, its OpenAPI document and the Go
// client that the CLI uses. It depends on nothing inside cove.
package api

import "time"

// Session states. A session moves creating → running ⇄ (parking → parked →
// waking → running) … → stopping → (deleted), or to failed when its VM dies,
// never answers, or its snapshot cannot be restored.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateParking  = "parking"
	StateParked   = "parked"
	StateWaking   = "waking"
	StateStopping = "stopping"
	StateFailed   = "failed"
	// StateLost is a session whose VM ran on a node that died: its
	// Error says since when, and whether it has a stored snapshot that
	// a wake --from-last-snapshot goes back to.
	StateLost = "lost"
)

// States lists every session state.
var States = []string{StateCreating, StateRunning, StateParking, StateParked, StateWaking, StateStopping, StateFailed}

// Session is one microVM and the agent inside it.
type Session struct {
	ID        string            `json:"id"`
	State     string            `json:"state"`
	Image     string            `json:"image"`
	MemoryMiB int               `json:"memory_mib"`
	CPUs      int               `json:"cpus"`
	Env       map[string]string `json:"env,omitempty"`
	Accel     string            `json:"accel,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	// Error says why a session is failed.
	Error string `json:"error,omitempty"`
	// BootMillis is how long the VM took from spawn to the agent's first answer.
	BootMillis int64 `json:"boot_ms,omitempty"`

	// Template names the template the session was cloned from, and
	// TemplateVersion which of its versions.
	Template        string `json:"template,omitempty"`
	TemplateVersion int    `json:"template_version,omitempty"`
	// IdleTimeout is how long the session may go without API activity
	// before it is parked ("0s": never).
	IdleTimeout string `json:"idle_timeout,omitempty"`
	// AutoWake says whether exec and file calls wake a parked session.
	AutoWake bool `json:"auto_wake"`
	// Snapshot describes the parked snapshot while the session is parked.
	Snapshot *SnapshotInfo `json:"snapshot,omitempty"`
	// LastSnapshotAt is when the session's last stored snapshot that a
	// wake consumed was taken: what wake --from-last-snapshot brings a
	// lost or failed session back to. Absent if there is none.
	LastSnapshotAt *time.Time `json:"last_snapshot_at,omitempty"`
	// Waiting is the pending subscription of a session parked until an
	// event.
	Waiting *Waiting `json:"waiting,omitempty"`

	// Owner is the id of the user the session acts for: the user whose
	// token created it (for a clone, its creator, not the template's
	// owner), or OwnerAdmin when the admin token did.
	Owner string `json:"owner"`
	// Agent is the name of the agent the session runs (--agent), "" if
	// none.
	Agent string `json:"agent,omitempty"`
	// Parent is the session this one was forked from, and FromCheckpoint
	// the parent's checkpoint it was restored from; both "" if it is no
	// fork.
	Parent         string `json:"parent,omitempty"`
	FromCheckpoint string `json:"from_checkpoint,omitempty"`
	// Allow is the egress the session's create allowed (see
	// CreateSessionRequest.Allow); its template's and the operator's
	// rules apply as well.
	Allow []string `json:"allow,omitempty"`

	// Stored says whether the parked session's snapshot is durable in
	// the object store: it then wakes even where this host's files of it
	// are gone. A park's upload runs after the park returns; a wake ends
	// it (the next park uploads again).
	Stored bool `json:"stored"`
	// StoredBytes is what the stored snapshot's upload added to the
	// object store: chunks no earlier upload had put there, compressed,
	// and the manifest.
	StoredBytes int64 `json:"stored_bytes,omitempty"`
	// Evicted says that the stored parked session's snapshot files are
	// not on the server's host (evicted from its cache, --cache-size):
	// its wake restores them from the object store first.
	Evicted bool `json:"evicted,omitempty"`
	// Restore is set while a wake puts the session's files back from
	// the object store, because they (or its template version's, or its
	// image's) are gone from this host: bytes written so far of all it
	// restores.
	Restore *RestoreProgress `json:"restore,omitempty"`
	// Node is the id of the node that holds the session: runs its VM,
	// or keeps its parked snapshot's files.
	Node string `json:"node,omitempty"`
}

// GCResult is the answer of POST /v1/admin/gc: what one garbage
// collection of the object store did.
type GCResult struct {
	// ManifestsKept counts the manifests kept: named by a record, a base
	// of one kept, or younger than the grace period.
	ManifestsKept    int `json:"manifests_kept"`
	ManifestsDeleted int `json:"manifests_deleted"`
	// ChunksKept are named by a kept manifest; ChunksYoung by none, but
	// younger than the grace period.
	ChunksKept    int   `json:"chunks_kept"`
	ChunksYoung   int   `json:"chunks_young"`
	ChunksDeleted int   `json:"chunks_deleted"`
	BytesDeleted  int64 `json:"bytes_deleted"`
	// Broken lists the manifests records name that are missing or
	// corrupt in the object store: they can restore nothing (a wake of
	// such a session needs its local files), and the collection went on
	// without them.
	Broken []string `json:"broken,omitempty"`
}

// RestoreProgress is a wake's restore from the object store under way.
type RestoreProgress struct {
	DoneBytes  int64 `json:"done_bytes"`
	TotalBytes int64 `json:"total_bytes"`
}

// OwnerAdmin is the Owner of sessions and templates made with the
// server's admin token, which is no user (user ids start "u_").
const OwnerAdmin = "admin"

// Waiting is what a parked session waits for.
type Waiting struct {
	Until []string `json:"until"`
	// Deadline is when a timeout event wakes it, if set.
	Deadline *time.Time `json:"deadline,omitempty"`
}

// ParkRequest is the body of POST /v1/sessions/{id}/park. Both fields are
// optional: without them the session parks until it is woken.
type ParkRequest struct {
	// Until lists trigger expressions (see the README's grammar); the
	// session wakes on the first incoming event that matches any of them.
	Until []string `json:"until,omitempty"`
	// Timeout wakes the session with a "cove:timeout" event after this
	// long (a Go duration such as "6h").
	Timeout string `json:"timeout,omitempty"`
}

// HookSecretRequest is the body of PUT /v1/hook-secrets/{name}.
type HookSecretRequest struct {
	Secret string `json:"secret"`
}

// WakeRequest is the body of POST /v1/sessions/{id}/wake; empty (or
// absent) for a plain wake of a parked session.
type WakeRequest struct {
	// FromLastSnapshot brings a lost session (its node died while it
	// ran), or a failed one, back from its last stored snapshot, on the
	// node of the server asked: the work done since that snapshot is
	// gone.
	FromLastSnapshot bool `json:"from_last_snapshot,omitempty"`
}

// SnapshotInfo describes a parked session's snapshot.
type SnapshotInfo struct {
	// DiskBytes is what the snapshot takes on disk: the sparse memory
	// file's allocated bytes plus the device state.
	DiskBytes int64 `json:"disk_bytes"`
	// MemoryBytes is the guest RAM size the snapshot stands for.
	MemoryBytes int64     `json:"memory_bytes"`
	CreatedAt   time.Time `json:"created_at"`
	// ParkMillis is how long the park took.
	ParkMillis int64 `json:"park_ms"`
}

// CreateSessionRequest is the body of POST /v1/sessions. Zero fields take
// the server's defaults (image "tiny", 512 MiB, 1 CPU).
type CreateSessionRequest struct {
	Image     string            `json:"image,omitempty"`
	MemoryMiB int               `json:"memory_mib,omitempty"`
	CPUs      int               `json:"cpus,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	// BootTimeout is a Go duration ("60s"); the default is the server's.
	BootTimeout string `json:"boot_timeout,omitempty"`
	// Template restores a clone of the named template instead of booting;
	// Image, MemoryMiB and CPUs then come from the template.
	Template string `json:"template,omitempty"`
	// IdleTimeout parks the session after that long without API activity
	// and no attached PTY (a Go duration; "0s" never; empty: the server's
	// default).
	IdleTimeout string `json:"idle_timeout,omitempty"`
	// NoAutoWake makes exec and file calls on a parked session fail with
	// 409 instead of waking it.
	NoAutoWake bool `json:"no_auto_wake,omitempty"`
	// Agent names the agent the session runs ("review-bot"): lowercase
	// letters, digits, '.', '_' or '-', at most 64. A clone's agent is
	// the one named here, never its template's.
	Agent string `json:"agent,omitempty"`
	// Allow is the egress the session may use, through the host's proxy:
	// rules in the form "[METHOD,…] HOST[:PORT,…][/PATH]" ("github.com",
	// "*.pypi.org", "GET api.github.com/repos/"; no port: 80 and 443).
	// Nothing else is reached: the default is no egress at all. A
	// clone's template adds its rules, and the operator's (--egress-allow).
	Allow []string `json:"allow,omitempty"`
	// NodeSelector places the session only on a node with these labels
	// (each key with this value).
	NodeSelector map[string]string `json:"node_selector,omitempty"`
}

// Template is a booted, set-up machine saved as a snapshot; sessions
// created from it restore a copy-on-write clone instead of booting.
type Template struct {
	Name      string            `json:"name"`
	State     string            `json:"state"` // building, ready, failed
	Image     string            `json:"image"`
	MemoryMiB int               `json:"memory_mib"`
	CPUs      int               `json:"cpus"`
	Env       map[string]string `json:"env,omitempty"`
	Setup     []string          `json:"setup,omitempty"`
	Start     string            `json:"start,omitempty"`
	// Pool is how many clones are kept restored and ready.
	Pool int `json:"pool"`
	// PoolReady is how many are ready now.
	PoolReady int `json:"pool_ready"`
	// CloneFilesReady is how many sets of a clone's files (RAM file, disk
	// overlay) are made ahead for the current version, for creates that
	// find the pool empty (see the server's --clone-files).
	CloneFilesReady int           `json:"clone_files_ready,omitempty"`
	Error           string        `json:"error,omitempty"`
	Snapshot        *SnapshotInfo `json:"snapshot,omitempty"`
	CreatedAt       time.Time     `json:"created_at"`
	UpdatedAt       time.Time     `json:"updated_at"`

	// Repo is the git repository the template is built from, Branch the
	// branch it follows and RepoDir the checkout's path in the guest.
	// RepoName is the owner/name a push webhook must name to rebuild it.
	Repo     string `json:"repo,omitempty"`
	Branch   string `json:"branch,omitempty"`
	RepoDir  string `json:"repo_dir,omitempty"`
	RepoName string `json:"repo_name,omitempty"`
	// Version is the version new sessions are cloned from, Commit the
	// commit it was built from.
	Version int    `json:"version"`
	Commit  string `json:"commit,omitempty"`
	// Rebuilding says a build of a new version is queued or running.
	Rebuilding bool `json:"rebuilding,omitempty"`
	// Stored says whether the current version's files are durable in the
	// object store (set by GET /v1/templates/{name} only; see
	// TemplateVersion.Stored).
	Stored bool `json:"stored,omitempty"`

	// Owner is the id of the user who created the template, or
	// OwnerAdmin; Agent the agent name given at its create, "" if none.
	Owner string `json:"owner"`
	Agent string `json:"agent,omitempty"`
	// Allow is the egress its sessions may use (see CreateTemplateRequest).
	Allow []string `json:"allow,omitempty"`
}

// TemplateVersion is one build of a template (GET
// /v1/templates/{name}/versions).
type TemplateVersion struct {
	Version int `json:"version"`
	// State is building, ready, failed or removed (its files deleted once
	// nothing used it).
	State  string `json:"state"`
	Commit string `json:"commit,omitempty"`
	// Base is the version this one started from (0: a fresh boot).
	Base int `json:"base"`
	// Reason says what asked for the build: create, push DELIVERY-ID,
	// rebuild (by hand) or restart (a check at server start).
	Reason string `json:"reason"`
	Error  string `json:"error,omitempty"`
	// Log is what the build's setup and start commands wrote, each after
	// its "$ COMMAND" line and followed by its exit status: a good
	// build's as a failed one's, its last 32 KiB.
	Log         string `json:"log,omitempty"`
	BuildMillis int64  `json:"build_ms,omitempty"`
	// Current marks the version new sessions are cloned from.
	Current bool `json:"current"`
	// Sessions counts the sessions cloned from this version that exist.
	Sessions int `json:"sessions"`
	// Stored says whether the version's files are durable in the object
	// store, so that its clones wake on hosts that lack them.
	Stored    bool          `json:"stored"`
	Snapshot  *SnapshotInfo `json:"snapshot,omitempty"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
}

// SetPoolRequest is the body of PUT /v1/templates/{name}/pool.
type SetPoolRequest struct {
	// Size is how many ready clones the template's warm pool keeps,
	// 0..64; required.
	Size *int `json:"size"`
}

// Template version states.
const (
	VersionBuilding = "building"
	VersionReady    = "ready"
	VersionFailed   = "failed"
	VersionRemoved  = "removed"
)

// CreateTemplateRequest is the body of POST /v1/templates.
type CreateTemplateRequest struct {
	Name      string            `json:"name"`
	Image     string            `json:"image,omitempty"`
	MemoryMiB int               `json:"memory_mib,omitempty"`
	CPUs      int               `json:"cpus,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	// Setup commands run in order with sh -c; the first failure fails the
	// template, with its output in the error.
	Setup []string `json:"setup,omitempty"`
	// Start is a command left running in the background when the template
	// is saved (a language server, say); every clone has it running.
	Start string `json:"start,omitempty"`
	Pool  int    `json:"pool,omitempty"`
	// Repo is a git repository (an https, http, ssh, git or file URL,
	// user@host:path, or an absolute path) that the server fetches and
	// checks out at RepoDir in the guest before the setup commands, on
	// Branch (default main). A push to that branch rebuilds the template
	// from its last version.
	Repo    string `json:"repo,omitempty"`
	Branch  string `json:"branch,omitempty"`
	RepoDir string `json:"repo_dir,omitempty"`
	// Agent names the agent the template is made for, as in
	// CreateSessionRequest; its clones do not inherit it.
	Agent string `json:"agent,omitempty"`
	// Allow is the egress the template's sessions may use, on top of
	// their own: rules in the form "[METHOD,…] HOST[:PORT,…][/PATH]"
	// ("github.com", "*.pypi.org", "GET api.github.com/repos/").
	Allow []string `json:"allow,omitempty"`
	// FromCheckpoint, "SESSION:NAME", makes the template's first version
	// from that checkpoint of a session instead of a boot and setup: its
	// machine (image, memory, CPUs) and env are the session's; Image,
	// MemoryMiB, CPUs, Setup, Start and Repo must be empty.
	FromCheckpoint string `json:"from_checkpoint,omitempty"`
}

// Template states.
const (
	TemplateBuilding = "building"
	TemplateReady    = "ready"
	TemplateFailed   = "failed"
)

// ExecRequest is the body of POST /v1/sessions/{id}/exec and the first
// message of the exec WebSocket.
type ExecRequest struct {
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env,omitempty"`
	Cwd  string            `json:"cwd,omitempty"`
	// Stdin is given to the command whole, then closed (buffered and NDJSON
	// forms). The WebSocket form streams stdin instead.
	Stdin []byte `json:"stdin,omitempty"`
	// Timeout is a Go duration; the command is killed when it passes.
	Timeout string `json:"timeout,omitempty"`
	TTY     bool   `json:"tty,omitempty"`
	Rows    int    `json:"rows,omitempty"`
	Cols    int    `json:"cols,omitempty"`
	// User names the guest user (of the guest's /etc/passwd) the command
	// runs as: its uid, gid and groups, HOME, USER and LOGNAME (unless
	// Env sets them), starting in its home unless Cwd is set. Empty:
	// root. A user the guest lacks is 400; a session whose guest agent
	// predates users (one woken from before) is 409, not run as root.
	User string `json:"user,omitempty"`
}

// ExecResult is the answer of the buffered exec form.
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   []byte `json:"stdout"`
	Stderr   []byte `json:"stderr"`
	// Signal names the signal that ended the command, if one did.
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	// Truncated is set when output passed the buffered form's limit.
	Truncated  bool  `json:"truncated,omitempty"`
	DurationMs int64 `json:"duration_ms"`
}

// ExecEvent is one line of the NDJSON exec stream and one message of the
// exec WebSocket (both directions).
//
// Server → client types: "stdout", "stderr" (Data), "exit" (ExitCode,
// Signal, TimedOut), "error" (Error).
// Client → server types (WebSocket only): "stdin" (Data), "stdin_close",
// "resize" (Rows, Cols), "signal" (Signal, e.g. "INT").
type ExecEvent struct {
	Type     string     `json:"type"`
	Data     []byte     `json:"data,omitempty"`
	ExitCode int        `json:"exit_code,omitempty"`
	Signal   string     `json:"signal,omitempty"`
	TimedOut bool       `json:"timed_out,omitempty"`
	Rows     int        `json:"rows,omitempty"`
	Cols     int        `json:"cols,omitempty"`
	Error    *ErrorBody `json:"error,omitempty"`
}

// Exec event types.
const (
	EventStdout     = "stdout"
	EventStderr     = "stderr"
	EventExit       = "exit"
	EventError      = "error"
	EventStdin      = "stdin"
	EventStdinClose = "stdin_close"
	EventResize     = "resize"
	EventSignal     = "signal"
)

// FileInfo describes one path in a guest.
type FileInfo struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Mode    uint32    `json:"mode"` // permission and special bits (0o4755)
	IsDir   bool      `json:"is_dir"`
	Symlink bool      `json:"symlink,omitempty"`
	ModTime time.Time `json:"mod_time"`
	// UID and GID own the file in the guest.
	UID int `json:"uid"`
	GID int `json:"gid"`
}

// WatchEvent is one change under a watched guest directory. Name is the
// changed entry's path relative to the watched directory; Type is one of
// create, write, remove, rename (moved away), chmod, or overflow: then
// Dropped events (0: an unknown number) were lost before it, because the
// watcher fell behind. Info describes the entry where the watch asked for
// it and the entry still existed.
type WatchEvent struct {
	Name    string    `json:"name,omitempty"`
	Type    string    `json:"type"`
	Info    *FileInfo `json:"info,omitempty"`
	Dropped int64     `json:"dropped,omitempty"`
}

// Image is a read-only base disk that sessions boot from.
type Image struct {
	Name string `json:"name"`
	// Key is the hash of everything the image was built from; a build with
	// the same inputs reuses the cached image.
	Key       string    `json:"key"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	BuildMs   int64     `json:"build_ms,omitempty"`
	// Stored says whether the image's files are durable in the object
	// store, so that what rests on it wakes on hosts that lack them.
	Stored bool `json:"stored"`
}

// ImageBuildEvent is one line of the NDJSON progress stream of
// POST /v1/images/{name}/build. The last line has Type "done" (Image set) or
// "error" (Error set).
type ImageBuildEvent struct {
	Type    string     `json:"type"` // "progress", "done", "error"
	Message string     `json:"message,omitempty"`
	Image   *Image     `json:"image,omitempty"`
	Error   *ErrorBody `json:"error,omitempty"`
}

// ErrorResponse is the body of every 4xx and 5xx answer.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody is the inside of ErrorResponse.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ExitStatus is how a command ended.
type ExitStatus struct {
	Code int
	// Signal names the signal that killed the command ("KILL"), if one did.
	Signal   string
	TimedOut bool
}

// Checkpoint is a saved whole machine of a running session (memory,
// processes, disk), taken while it ran on: the session can be rolled back
// to it, and forked from it.
type Checkpoint struct {
	Session   string    `json:"session"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// Bytes is the disk space the checkpoint's own files take: the
	// sparse RAM copy, the device state and the disk layer it froze (the
	// writes since the layer beneath). What lies beneath (earlier
	// layers, the template's or image's disk) is shared. Once MemShared,
	// the RAM copy counts only what differs from the RAM beneath it.
	Bytes int64 `json:"bytes"`
	// PauseMillis is how long the session's guest was paused to take it.
	PauseMillis int64 `json:"pause_ms"`
	// MemShared says the RAM copy was re-encoded, after the pause, as
	// the pages that differ from the RAM of the session's checkpoint
	// before it (or of its template); until then it is a full copy.
	MemShared bool `json:"mem_shared,omitempty"`
}

// CheckpointRequest is the body of POST /v1/sessions/{id}/checkpoints.
type CheckpointRequest struct {
	// Name names the checkpoint, unique in the session ([a-z0-9][a-z0-9._-]*,
	// at most 64 characters); "" gives ckpt-N, N one more than the
	// session's checkpoints so far.
	Name string `json:"name,omitempty"`
}

// RollbackRequest is the body of POST /v1/sessions/{id}/rollback.
type RollbackRequest struct {
	// Checkpoint names the checkpoint to go back to.
	Checkpoint string `json:"checkpoint"`
}

// ForkRequest is the body of POST /v1/sessions/{id}/fork.
type ForkRequest struct {
	// N is how many forks to make: 1 (the default) to 16.
	N int `json:"n,omitempty"`
	// From names the checkpoint to fork from; "" takes one of the running
	// session now (an ordinary checkpoint, named as a default one is).
	From string `json:"from,omitempty"`
}

// ForkResponse is the answer to POST /v1/sessions/{id}/fork.
type ForkResponse struct {
	Sessions []Session `json:"sessions"`
}

// Package session runs the lifecycle of sessions: a session is one microVM
// booted from an image, with the guest agent answering inside it. The
// manager keeps the state store and the running VMs in step, re-adopts VMs
// after a restart, and turns guest and VMM failures into clear errors.
//
// States: creating → running → stopping → (deleted); failed from creating
// or running when the VM dies, never answers, or is lost.
package session

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/trigger"
	"github.com/cove-dev/cove/internal/vmm"
)

// Images is what the manager needs of the image builder.
type Images interface {
	Get(ctx context.Context, name string) (image.Image, error)
	Kernel(ctx context.Context, progress func(string)) (image.Kernel, error)
	Initramfs(k image.Kernel) (string, error)
}

// Config wires a Manager.
type Config struct {
	Store  store.Store
	Driver vmm.Driver
	Images Images
	// Dir holds one private directory per session.
	Dir string
	// TemplateDir holds one directory per template; default: "templates"
	// beside Dir.
	TemplateDir string
	Log         *slog.Logger

	// Defaults for create requests that leave fields empty.
	DefaultImage       string        // "tiny"
	DefaultMemoryMiB   int           // 512
	DefaultCPUs        int           // 1
	DefaultBootTimeout time.Duration // 60s

	// DefaultIdleTimeout parks sessions idle that long (0: never) unless
	// a session sets its own.
	DefaultIdleTimeout time.Duration

	// CloneFiles is how many sets of a clone's files (RAM file, disk
	// overlay) are kept made ahead for each ready template, so a create
	// from an empty pool does not copy; 0 none.
	CloneFiles int

	// OnBoot, if set, is told each successful boot's duration.
	OnBoot func(time.Duration)
	// OnEvent, if set, is told what the session layer does, whoever
	// asked for it (the API, idle parking, park --until, an exec's
	// auto-wake, an event, a timeout, a guest, a restart): each park,
	// wake and guest token before it takes effect (an error refuses it)
	// and when it ended; a park of a parked session or a wake of a
	// running one does nothing and is not told. Metrics
	// (ObserveDurations) and the audit log (AuditEvents) consume it;
	// Hooks tells several. It must be safe for concurrent use.
	OnEvent func(context.Context, Event) error

	// CrashPoint, if set, is called at each named step of the lifecycle
	// operations (create, park, wake, clone, pool refill, template build,
	// delivery, delete; see docs/ARCHITECTURE.md): the crash-safety tests
	// kill the server there. Never set in production.
	CrashPoint func(name string)

	// AnswerTimeout bounds the wait for a guest agent's answer to a
	// request (see agentproto.AnswerTimeout, the default): a frozen guest
	// fails calls with 504 after it.
	AnswerTimeout time.Duration
	// Egress serves the guests' network connections; nil: sessions have
	// no network at all.
	Egress Egress

	// Admission bounds what the sessions' VMs take of the host (see
	// admit.go); the zero value is the defaults.
	Admission Admission

	// Tokens mints the sessions' identity tokens that tools in the guest
	// ask for ('cove-agent token'); nil refuses those requests.
	Tokens TokenMinter

	// Objects is where parked sessions' snapshots go off the host (see
	// offhost.go), with their template versions' files and, when Images
	// is an ImageStore, their images' (bases.go); nil: they stay on this
	// host only.
	Objects SnapshotStore
	// CacheSize bounds the bytes of parked sessions' snapshot files on
	// this host: past it, stored sessions' files are evicted, least
	// recently parked first (see cache.go); 0: no bound.
	CacheSize int64

	// ServerID names this manager to the other servers sharing its
	// store: it owns the work it claims there (see claim.go). Empty: a
	// random one, made by New.
	ServerID string
	// LeaseTTL is how long a claim of work lasts unless renewed: a
	// server that dies holding one lets go of it after that long. 0:
	// 30 s.
	LeaseTTL time.Duration
	// PoolWindow is how far back a node's warm pool of a template looks
	// at the creates from it placed on the node to size itself (see
	// poolDemand); 10 minutes when zero.
	PoolWindow time.Duration

	// GCInterval is how often the object store's garbage is collected
	// (gc.go); 0: never on a schedule (CollectGarbage still runs one).
	// GCGrace is how old unnamed objects must be before a GC deletes
	// them; 0 means DefaultGCGrace.
	GCInterval time.Duration
	GCGrace    time.Duration
	// UploadRetry is the wait before a failed snapshot upload is tried
	// again; it doubles with each failure in a row, up to 10 minutes.
	// 0: 10 s.
	UploadRetry time.Duration
	// IdempotencyTTL is how long a create's Idempotency-Key is kept: a
	// sweep (one server of those sharing the store, under a claim) frees
	// older keys, and a retry with a freed key makes a new session. 0:
	// kept for ever (cove server's default is DefaultIdempotencyTTL).
	IdempotencyTTL time.Duration

	// Node is the id of this server's embedded node (see
	// RegisterEmbeddedNode; node.go): the sessions it creates record it,
	// creates are placed (package placement) over the registered nodes,
	// and Recover adopts only the sessions it holds and those recorded
	// before nodes existed (writing its id into them). "": no node
	// registry (tools, tests): sessions record no node.
	Node string
	// NoNode says this server runs no VMs (cove server --node=false):
	// creates and wakes fail with 503, saying why no node fits, and
	// Recover adopts no session.
	NoNode bool
	// Route says that calls are routed between the servers sharing the
	// store (cove server --advertise-url, package route): the embedded
	// nodes of other servers that advertise a URL take new sessions too,
	// and a create placed on one fails here with *ElsewhereError, for the
	// API server to carry it there; a delivery is made by the server
	// whose node holds its session. Without it only this server's node
	// takes sessions.
	Route bool
	// Linked says that Node is a joined node ('cove node' serving
	// sessions) that the servers reach through its control connection
	// (package nodelink), not a server's embedded node: its agent
	// heartbeats it (and calls Heartbeated after each one stored), so
	// this manager runs no heartbeat loop, and it adopts no record that
	// names no node (those from before nodes belong to the servers'
	// embedded nodes).
	Linked bool
	// NodeProbe reports the embedded node's capacity at each heartbeat,
	// every NodeHeartbeat (0: 10 s); nil: no heartbeats.
	NodeProbe     func(context.Context) (store.NodeCapacity, error)
	NodeHeartbeat time.Duration
	// NodeGrace is how long a node may go without a heartbeat before the
	// sweeper, which runs every third of it, marks it dead; 0: no
	// sweeper.
	NodeGrace time.Duration
	// FenceAfter is how long this manager's node may go without a
	// heartbeat the store took before it freezes every VM it runs
	// (self-fencing, fence.go): less than the sweepers' NodeGrace, so
	// that a node taken for dead has stopped its VMs before another node
	// can take its sessions over. 0: never (a store no other node shares,
	// SQLite's). It needs a driver that implements vmm.Freezer.
	FenceAfter time.Duration

	// MaxCheckpoints bounds the checkpoints one session holds (each keeps
	// a RAM copy); 0: DefaultMaxCheckpoints.
	MaxCheckpoints int
	// GuestCheckpointBurst and GuestCheckpointEvery bound the checkpoint
	// and rollback requests of one session's guest: Burst at once, then
	// one per Every (guestlimit.go); 0: the defaults.
	GuestCheckpointBurst int
	GuestCheckpointEvery time.Duration
	// GuestCheckpointsAtOnce bounds the guests' checkpoints and rollbacks
	// under way on the host, all sessions together (the others wait
	// their turn); 0: DefaultGuestCheckpointsAtOnce.
	GuestCheckpointsAtOnce int
}

// Manager manages sessions. It is safe for concurrent use.
type Manager struct {
	cfg     Config
	changes changes          // the session records' changes, for Changes
	disks   vmm.Disks        // the driver's: makes the sessions' disk files
	snap    vmm.Snapshotter  // nil when the driver cannot snapshot
	ckpt    vmm.Checkpointer // nil when the driver cannot checkpoint
	frz     vmm.Freezer      // nil when the driver cannot freeze VMs

	mu    sync.Mutex
	live  map[string]*live         // guarded by mu: sessions with a VM
	locks map[string]*sync.Mutex   // guarded by mu: one lifecycle operation per session at a time
	pools map[string]*pool         // guarded by mu: warm pools by template name
	woke  map[string]chan struct{} // guarded by mu: closed when the session runs again

	rollbacks map[string]rollbackMark  // guarded by mu: each session's last rollback (rollback.go)
	guestRate map[string]*rate.Limiter // guarded by mu: each session's guest checkpoint and rollback requests (guestlimit.go)
	guestWork chan struct{}            // a slot per guest checkpoint or rollback under way, host-wide (guestlimit.go)

	builds  map[string]*builder      // guarded by mu: template builds queued or running, by name
	follows map[string][]string      // guarded by mu: templates by the repo and branch they follow
	tlocks  map[string]*sync.RWMutex // guarded by mu: read-held while a template version is cloned

	cloneFiles  map[string][]cloneFiles // guarded by mu: sets made ahead, by template name
	cloneWanted map[string]bool         // guarded by mu: templates whose sets the maker is to fill
	cloneKick   chan struct{}           // wakes the maker

	index     trigger.Index        // subscriptions of sessions parked until an event
	deadlines map[string]time.Time // guarded by mu: when each subscription with a timeout times out
	deliver   chan struct{}        // kicks the deliverer

	leases map[string]bool // guarded by mu: keys of the work this manager holds claimed (claim.go)

	graceWarned sync.Map // node id → true: told it is marked dead later than the grace (graceOf)

	stop chan struct{} // closed by Close/StopAll: ends background loops
	raw  store.Store   // Config.Store as given, before changeStore wraps it

	encodeQ  []ckptRef // guarded by mu: checkpoints whose RAM is to be re-encoded (memchain.go)
	encoding bool      // guarded by mu: encodeLoop runs
	encodeWG sync.WaitGroup
	bg       sync.WaitGroup

	admitted admitted   // room reserved by starts under way (admit.go)
	placing  placing    // placements on this node not yet recorded (reserve.go)
	ups      uploads    // snapshot uploads to Config.Objects (offhost.go)
	cache    nodeCache  // the evictor of Config.CacheSize (cache.go)
	gcMu     sync.Mutex // held by a GC run (gc.go)
	view     storeView  // since when this manager's store calls succeed without a break (the sweeper's, node.go)
	fz       fencing    // the node's self-fencing: its heartbeats, its frozen VMs (fence.go)
}

// live is a session with a VM process.
type live struct {
	vm   vmm.VM
	env  map[string]string
	mach machine

	agentMu sync.Mutex
	agent   *agentproto.Client // guarded by agentMu: replaced when a failed park reconnects
	// restore is what the guest must be told it was restored from
	// before its requests are served (see serveGuest); nil once told.
	restore *agentproto.Restored // guarded by agentMu
	// deleting is set when the VM is being stopped on purpose (delete,
	// park, shutdown): its exit is then no failure.
	deleting bool // guarded by Manager.mu

	// serving is set when the guest's requests are already served
	// (serveGuest runs): a warm pool starts it before the claim.
	serving bool

	lastActive atomic.Int64 // unix nanos of the last API call
	inflight   atomic.Int32 // calls and execs in progress
	// idle is the session's idle timeout in nanoseconds, read from its
	// record by the idle loop the first time it needs it (a session's
	// timeout does not change while it runs): 0 unread, -1 never.
	idle atomic.Int64
	// calls counts calls using the agent connection that cannot outlive
	// it (a request waiting for its answer, a file transfer; not an
	// attached command's stream, which re-attaches): a park waits for
	// them before it hangs up. Taken only under Manager.mu while the
	// session is not being parked or removed (see withAgent).
	calls atomic.Int32
}

// client is the session's agent connection.
func (l *live) client() *agentproto.Client {
	l.agentMu.Lock()
	defer l.agentMu.Unlock()
	return l.agent
}

// setClient replaces the session's agent connection.
func (l *live) setClient(c *agentproto.Client) {
	l.agentMu.Lock()
	l.agent = c
	l.agentMu.Unlock()
}

// setRestore records what the guest must be told it was restored from.
func (l *live) setRestore(r *agentproto.Restored) {
	l.agentMu.Lock()
	l.restore = r
	l.agentMu.Unlock()
}

// pendingRestore returns what the guest is yet to be told, if anything.
func (l *live) pendingRestore() *agentproto.Restored {
	l.agentMu.Lock()
	defer l.agentMu.Unlock()
	return l.restore
}

// touch records API activity.
func (l *live) touch() { l.lastActive.Store(time.Now().UnixNano()) }

// release ends one in-flight call (see inflight).
func (l *live) release() {
	l.inflight.Add(-1)
	l.touch()
}

// New returns a manager. Call Recover before serving.
func New(cfg Config) (*Manager, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.DefaultImage == "" {
		cfg.DefaultImage = "tiny"
	}
	if cfg.DefaultMemoryMiB == 0 {
		cfg.DefaultMemoryMiB = 512
	}
	if cfg.DefaultCPUs == 0 {
		cfg.DefaultCPUs = 1
	}
	if cfg.DefaultBootTimeout == 0 {
		cfg.DefaultBootTimeout = 60 * time.Second
	}
	if cfg.PoolWindow == 0 {
		cfg.PoolWindow = 10 * time.Minute
	}
	if cfg.TemplateDir == "" {
		cfg.TemplateDir = filepath.Join(filepath.Dir(cfg.Dir), "templates")
	}
	if cfg.ServerID == "" {
		cfg.ServerID = newServerID()
	}
	if err := os.MkdirAll(cfg.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("session: %w", err)
	}
	// An unprivileged QEMU must traverse to its own directory.
	if err := os.Chmod(cfg.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("session: %w", err)
	}
	m := &Manager{cfg: cfg, live: map[string]*live{}, locks: map[string]*sync.Mutex{},
		pools: map[string]*pool{}, woke: map[string]chan struct{}{}, stop: make(chan struct{}), rollbacks: map[string]rollbackMark{},
		guestRate: map[string]*rate.Limiter{}, guestWork: make(chan struct{}, cmp(cfg.GuestCheckpointsAtOnce, DefaultGuestCheckpointsAtOnce)),
		builds: map[string]*builder{}, follows: map[string][]string{}, tlocks: map[string]*sync.RWMutex{},
		deadlines: map[string]time.Time{}, deliver: make(chan struct{}, 1), leases: map[string]bool{},
		cloneFiles: map[string][]cloneFiles{}, cloneWanted: map[string]bool{}, cloneKick: make(chan struct{}, 1),
		ups: uploads{slots: make(chan struct{}, uploadsAtOnce), running: map[string]*upload{}, bases: map[string]*baseEntry{},
			restoring: map[string]*restoreProgress{}, failures: map[string]int{}},
		cache: nodeCache{kick: make(chan struct{}, 1)}}
	m.raw = cfg.Store
	m.cfg.Store = changeStore{Store: cfg.Store, c: &m.changes}
	m.disks = cfg.Driver.Disks()
	m.snap, _ = cfg.Driver.(vmm.Snapshotter)
	m.ckpt, _ = cfg.Driver.(vmm.Checkpointer)
	m.frz, _ = cfg.Driver.(vmm.Freezer)
	now := time.Now()
	m.view.since, m.fz.beat, m.fz.frozen = now, now, map[string]vmm.VM{}
	return m, nil
}

// crashPoint marks a named step for Config.CrashPoint.
func (m *Manager) crashPoint(name string) {
	if m.cfg.CrashPoint != nil {
		m.cfg.CrashPoint(name)
	}
}

// lock takes the session's lifecycle lock: create, park, wake and delete
// of one session never overlap.
func (m *Manager) lock(id string) func() {
	m.mu.Lock()
	l := m.locks[id]
	if l == nil {
		l = &sync.Mutex{}
		m.locks[id] = l
	}
	m.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "s-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))[:12]
}

func (m *Manager) toAPI(s store.Session) api.Session {
	out := api.Session{
		ID: s.ID, State: s.State, Image: s.Image, MemoryMiB: s.MemoryMiB, CPUs: s.CPUs,
		Env: s.Env, Accel: s.Accel, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt,
		Error: s.Error, BootMillis: s.BootMillis, Template: s.Template, TemplateVersion: s.TemplateVersion,
		IdleTimeout: m.idleTimeout(s).String(), AutoWake: !s.NoAutoWake,
		Snapshot: snapshotInfo(s.Snapshot), Owner: s.Owner, Agent: s.Agent, Allow: s.Allow,
		Parent: s.Parent, FromCheckpoint: s.FromCheckpoint,
		Stored: s.StoredManifest != "", StoredBytes: s.StoredBytes, Evicted: evicted(s),
		Restore: m.restoring(s.ID), Node: s.Node,
	}
	if s.State == api.StateLost || s.State == api.StateFailed {
		if mach, err := decodeMachine(s.Snapshot); err == nil && mach.LastStored != nil {
			at := mach.LastStored.At
			out.LastSnapshotAt = &at
		}
	}
	return out
}

// idleTimeout is the session's idle timeout, or the server default.
func (m *Manager) idleTimeout(s store.Session) time.Duration {
	if s.IdleTimeout != 0 {
		return max(s.IdleTimeout, 0)
	}
	return m.cfg.DefaultIdleTimeout
}

func (m *Manager) dir(id string) string { return filepath.Join(m.cfg.Dir, id) }

// Create boots a new session for owner (the id of the user it acts for;
// see owner.go) and returns once its agent answers.
func (m *Manager) Create(ctx context.Context, owner string, req api.CreateSessionRequest) (api.Session, error) {
	if err := CheckAgent("agent", req.Agent); err != nil {
		return api.Session{}, err
	}
	idle, err := parseIdle(req.IdleTimeout)
	if err != nil {
		return api.Session{}, err
	}
	timeout, err := checkBootTimeout(req.BootTimeout, m.cfg.DefaultBootTimeout)
	if err != nil {
		return api.Session{}, err
	}
	if err := CheckEnv("env", req.Env); err != nil {
		return api.Session{}, err
	}
	if req.Allow, err = CheckAllow("allow", req.Allow); err != nil {
		return api.Session{}, err
	}
	if err := checkSelector("node_selector", req.NodeSelector); err != nil {
		return api.Session{}, err
	}
	if req.Template != "" {
		return m.createFromTemplate(ctx, owner, req, idle)
	}
	name := req.Image
	if name == "" {
		name = m.cfg.DefaultImage
	}
	im, err := m.cfg.Images.Get(ctx, name)
	if err != nil {
		return api.Session{}, err
	}
	now := time.Now().UTC()
	rec := store.Session{
		ID: newID(), State: api.StateCreating, Image: name,
		MemoryMiB: cmp(req.MemoryMiB, m.cfg.DefaultMemoryMiB), CPUs: cmp(req.CPUs, m.cfg.DefaultCPUs),
		Env: req.Env, Accel: m.cfg.Driver.Accel(), CreatedAt: now, UpdatedAt: now,
		IdleTimeout: idle, NoAutoWake: req.NoAutoWake, Owner: owner, Agent: req.Agent, Allow: req.Allow,
	}
	withKey(ctx, &rec)
	var placed *reservation
	if rec.Node, placed, err = m.place(ctx, rec.MemoryMiB, rec.CPUs, req.NodeSelector, ""); err != nil {
		return api.Session{}, err
	}
	defer placed.release()
	release, err := m.admit("create", rec.MemoryMiB, rec.CPUs)
	if err != nil {
		return api.Session{}, err
	}
	defer release()
	if err := m.record(ctx, &rec, placed); err != nil {
		return api.Session{}, fmt.Errorf("session: create: %w", err)
	}
	m.crashPoint("create.recorded")
	log := m.cfg.Log.With("session", rec.ID)
	log.Info("creating session", "image", name, "memory_mib", rec.MemoryMiB, "cpus", rec.CPUs, "owner", owner, "agent", rec.Agent)

	start := time.Now()
	l, err := m.boot(ctx, rec, im, timeout)
	if err == nil && ctx.Err() != nil {
		// Booted, but the caller is gone (its server died mid-call, the
		// client gave up): nobody learns the session's id, and a retry
		// makes another, so this one is undone.
		l.client().Close()
		_ = l.vm.Stop(context.Background())
		os.RemoveAll(m.dir(rec.ID))
		err = ctx.Err()
	}
	if err != nil && ctx.Err() != nil {
		m.abandonCreate(rec, err)
		return api.Session{}, fmt.Errorf("session: create %s: given up, its caller gone: %w", rec.ID, err)
	}
	if err != nil {
		log.Warn("boot failed", "err", err)
		rec.State, rec.Error, rec.UpdatedAt = api.StateFailed, err.Error(), time.Now().UTC()
		// A background context: the record must say failed even when the
		// client went away.
		if uerr := m.cfg.Store.UpdateSession(context.Background(), &rec); uerr != nil {
			log.Error("record failed boot", "err", uerr)
			m.recordFollows(rec)
		}
		return api.Session{}, err
	}
	boot := time.Since(start)
	m.crashPoint("create.booted")
	rec.State, rec.Handle, rec.BootMillis, rec.UpdatedAt = api.StateRunning, l.vm.Handle(), boot.Milliseconds(), time.Now().UTC()
	rec.Snapshot = l.mach.encode()
	if err := m.cfg.Store.UpdateSession(context.Background(), &rec); err != nil {
		_ = l.vm.Stop(context.Background())
		os.RemoveAll(m.dir(rec.ID))
		rec.State, rec.Handle = api.StateFailed, nil
		rec.Error = "create: the running VM could not be recorded (it was stopped): " + err.Error()
		m.recordFollows(rec)
		return api.Session{}, fmt.Errorf("session: create %s: record: %w", rec.ID, err)
	}
	m.adoptLive(rec.ID, l)
	m.crashPoint("create.done")
	if m.cfg.OnBoot != nil {
		m.cfg.OnBoot(boot)
	}
	log.Info("session running", "boot_ms", rec.BootMillis)
	return m.toAPI(rec), nil
}

// abandonCreate removes the record of session rec, whose create was given
// up because its caller went away (its boot ended, its VM and files
// gone): a create whose answer reaches nobody leaves nothing, so that the
// caller's retry, through this server or another, makes the one session.
func (m *Manager) abandonCreate(rec store.Session, cause error) {
	ctx := context.Background()
	m.killStray(ctx, rec.ID)
	os.RemoveAll(m.dir(rec.ID))
	if err := m.cfg.Store.DeleteSession(ctx, rec.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		m.cfg.Log.Warn("a create given up (its caller gone): its record could not be removed; it is marked failed", "session", rec.ID, "err", err)
		rec.State, rec.Error, rec.UpdatedAt = api.StateFailed, "create given up: its caller went away: "+cause.Error(), time.Now().UTC()
		m.recordFollows(rec)
		return
	}
	// Its key freed after the record is gone (a retry with it makes the
	// session then); a crash in between leaves the key naming a removed
	// session: the retry is refused, never a second session made.
	if rec.IdempotencyKey != "" {
		if err := m.cfg.Store.DeleteSessionKey(ctx, rec.Owner, rec.IdempotencyKey); err != nil && !errors.Is(err, store.ErrNotFound) {
			m.cfg.Log.Warn("a create given up (its caller gone): its idempotency key could not be freed", "session", rec.ID, "err", err)
		}
	}
	m.cfg.Log.Info("create given up: its caller went away before it answered; nothing is kept", "session", rec.ID, "err", cause)
}

// parseIdle parses an idle timeout: empty means the server default (0),
// "0s" never (stored as -1).
func parseIdle(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, api.Errorf(api.CodeInvalid, "idle_timeout %q: want a duration like 10m, or 0s for never", s)
	}
	if d == 0 {
		return -1, nil
	}
	return d, nil
}

func cmp(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// boot prepares the session's directory and disk, boots the VM and waits
// for the agent. On error nothing is left behind but the record.
func (m *Manager) boot(ctx context.Context, rec store.Session, im image.Image, timeout time.Duration) (l *live, err error) {
	return m.bootIn(ctx, m.dir(rec.ID), rec, im, timeout)
}

// bootIn is boot into the directory dir, which must not exist.
func (m *Manager) bootIn(ctx context.Context, dir string, rec store.Session, im image.Image, timeout time.Duration) (l *live, err error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("session: %s: %w", rec.ID, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	k, err := m.cfg.Images.Kernel(ctx, func(msg string) { m.cfg.Log.Info(msg) })
	if err != nil {
		return nil, err
	}
	initrd, err := m.cfg.Images.Initramfs(k)
	if err != nil {
		return nil, err
	}
	disk := filepath.Join(dir, "disk.qcow2")
	if err := m.disks.Overlay(ctx, disk, im.RootFS, "raw"); err != nil {
		return nil, fmt.Errorf("session: %s: create overlay: %w", rec.ID, err)
	}
	spec := vmm.Spec{ID: rec.ID, Dir: dir, Kernel: k.Vmlinux, Initrd: initrd, Disk: disk, MemoryMiB: rec.MemoryMiB, CPUs: rec.CPUs}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	vm, err := m.cfg.Driver.Boot(bctx, spec)
	if err != nil {
		if bctx.Err() != nil && ctx.Err() == nil {
			return nil, api.Errorf(api.CodeTimeout, "session %s: VMM did not start within %s", rec.ID, timeout)
		}
		if errors.Is(err, vmm.ErrGuestStalled) {
			return nil, api.Errorf(api.CodeUnavailable, "session %s: %v", rec.ID, err)
		}
		return nil, fmt.Errorf("session: %s: %w", rec.ID, err)
	}
	agent, err := m.connect(bctx, vm)
	if err != nil {
		tail := vm.ConsoleTail()
		if ctx.Err() == nil {
			m.cfg.Log.Warn("booted guest's agent did not answer", "session", rec.ID, "err", err, "vmm", vm.Diagnose(context.Background()))
		}
		_ = vm.Stop(context.Background())
		exited := false
		select {
		case <-vm.Done():
			exited = bctx.Err() == nil
		default:
		}
		switch {
		case exited:
			return nil, api.Errorf(api.CodeUnavailable, "session %s: guest stopped during boot; console: %s", rec.ID, lastLines(tail, 8))
		case ctx.Err() != nil:
			return nil, fmt.Errorf("session: %s: boot cancelled: %w", rec.ID, ctx.Err())
		case bctx.Err() != nil:
			return nil, api.Errorf(api.CodeTimeout, "session %s: guest agent did not answer within %s (%v); console: %s", rec.ID, timeout, err, lastLines(tail, 8))
		default:
			return nil, api.Errorf(api.CodeUnavailable, "session %s: guest agent: %v", rec.ID, err)
		}
	}
	if m.cfg.Egress != nil {
		// Before the session is handed out: its first command already
		// has the proxy's environment. Clones and woken guests keep the
		// setup their memory holds.
		if err := agent.SetupEgress(bctx, m.cfg.Egress.Setup()); err != nil {
			agent.Close()
			_ = vm.Stop(context.Background())
			return nil, api.Errorf(api.CodeUnavailable, "session %s: %v", rec.ID, err)
		}
	}
	return &live{vm: vm, agent: agent, env: rec.Env, mach: machine{V: machineVersion, Kernel: k.Vmlinux,
		Initrd: initrd, Disk: disk, MemoryMiB: rec.MemoryMiB, CPUs: rec.CPUs}}, nil
}

// lastLines returns the last n lines of a console tail, joined. A kernel
// panic line goes first even when the panic's stack trace pushed it out of
// the last n: it is the line that says why the guest died.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	panicLine := ""
	for _, l := range lines {
		if strings.Contains(l, "Kernel panic") {
			panicLine = strings.TrimSpace(l)
			break
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 || (len(lines) == 1 && lines[0] == "") {
		return "(empty)"
	}
	out := strings.Join(lines, " | ")
	if panicLine != "" && !strings.Contains(out, panicLine) {
		out = panicLine + " | … | " + out
	}
	return out
}

// connect dials the agent and waits for its hello.
func (m *Manager) connect(ctx context.Context, vm vmm.VM) (*agentproto.Client, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-vm.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	c, _, err := agentproto.Connect(ctx, vm.DialAgent)
	if err == nil {
		c.SetAnswerTimeout(m.answerTimeout())
	}
	return c, err
}

// answerTimeout is how long a guest agent may take to answer a request.
func (m *Manager) answerTimeout() time.Duration {
	if m.cfg.AnswerTimeout > 0 {
		return m.cfg.AnswerTimeout
	}
	return agentproto.AnswerTimeout
}

// adoptLive registers a running VM and watches for its unexpected end.
func (m *Manager) adoptLive(id string, l *live) {
	l.touch()
	m.mu.Lock()
	m.live[id] = l
	if ch := m.woke[id]; ch != nil {
		close(ch)
		delete(m.woke, id)
	}
	m.mu.Unlock()
	if !l.serving {
		go m.serveGuest(id, l)
	}
	go m.watchAgent(id, l)
	go m.watchVMEnd(id, l)
}

// watchVMEnd records session id failed when its VM l ends unexpectedly.
// A store that cannot say for now whether the session still runs there
// (a full disk, a database restarting) is asked again until it can: the
// record must not say running, for good, of a VM that is gone.
func (m *Manager) watchVMEnd(id string, l *live) {
	<-l.vm.Done()
	m.mu.Lock()
	deleting := l.deleting
	if m.live[id] == l {
		delete(m.live, id)
	}
	m.mu.Unlock()
	l.client().Close()
	if deleting {
		return
	}
	for pause := followRetry; ; pause = min(2*pause, followRetryMax) {
		if done := m.recordVMEnd(id, l); done {
			return
		}
		select {
		case <-m.stop:
			return // the next server finds the VM gone
		case <-time.After(pause):
		}
	}
}

// recordVMEnd records session id failed if its record still says it runs
// on the VM l, which ended; done is false when the store could not say.
func (m *Manager) recordVMEnd(id string, l *live) (done bool) {
	// Under the session's lock: an operation that holds it (a checkpoint,
	// a rollback) writes the record from what it read, and would write
	// over a failure recorded meanwhile; it may also have put the session
	// elsewhere (a rollback parks it, a wake runs a new VM), and then this
	// VM's end is no news.
	unlock := m.lock(id)
	defer unlock()
	m.mu.Lock()
	moved := l.deleting || m.live[id] != nil
	m.mu.Unlock()
	if moved {
		return true
	}
	rec, err := m.cfg.Store.GetSession(context.Background(), id)
	if errors.Is(err, store.ErrUnavailable) {
		return false
	}
	if err != nil || rec.State != api.StateRunning {
		return true
	}
	tail := lastLines(l.vm.ConsoleTail(), 8)
	m.cfg.Log.Warn("VM exited unexpectedly", "session", id, "console", tail)
	rec.State, rec.Error, rec.UpdatedAt = api.StateFailed, "VM exited unexpectedly; console: "+tail, time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(context.Background(), &rec); err != nil {
		m.cfg.Log.Error("record failure", "session", id, "err", err)
		m.recordFollows(rec)
	}
	return true
}

// reconnectBackoff bounds the pause between attempts to connect again to
// a guest agent that does not answer.
const reconnectBackoff = 30 * time.Second

// watchAgent connects to the guest agent again whenever its connection
// ends while the VM runs and nobody ended it on purpose: a guest that
// corrupted its stream (garbage on its port) gets a fresh, synced
// connection, and commands re-attach to it; so does a guest whose answer
// to a park's detach came too late (its side of the connection may have
// ended after the park gave up), and a woken guest whose agent was late.
//
// A connection that a park or an rm ends is theirs to settle: the watcher
// waits for the outcome, and connects again only if the session runs on
// (a rolled-back park). A guest that does not answer is tried again, with
// a growing pause, for as long as its VM runs: its calls fail meanwhile,
// but a slow or frozen guest is never stopped for it, and an rm ends it.
//
// One watcher runs per live VM, from adoptLive until the VM goes, the
// session is let go (parked, removed) or the manager stops.
func (m *Manager) watchAgent(id string, l *live) {
	failures := 0
	for {
		c := l.client()
		select {
		case <-c.Done():
		case <-l.vm.Done():
			return
		case <-m.stop:
			return
		}
		if vmGone(l.vm) {
			return // the VM's own watcher says why
		}
		if !m.settled(id, l) {
			return
		}
		if l.client() != c {
			continue // a rolled-back park connected again already
		}
		if failures == 0 {
			m.cfg.Log.Warn("guest agent connection lost; connecting again", "session", id)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		nc, err := m.connect(ctx, l.vm)
		cancel()
		if err != nil {
			if vmGone(l.vm) {
				return
			}
			failures++
			pause := min(time.Duration(failures)*time.Second, reconnectBackoff)
			log := m.cfg.Log.With("session", id, "attempts", failures, "err", err, "next_in", pause)
			if failures%10 == 1 { // what QEMU knows, now and then: it costs a few QMP calls
				log = log.With("vmm", l.vm.Diagnose(context.Background()))
			}
			log.Warn("guest agent not answering; trying again")
			select {
			case <-time.After(pause):
			case <-l.vm.Done():
				return
			case <-m.stop:
				return
			}
			continue
		}
		m.mu.Lock()
		current := m.live[id] == l && !l.deleting
		if current {
			l.setClient(nc)
		}
		m.mu.Unlock()
		if !current {
			nc.Close()
			if !m.settled(id, l) {
				return
			}
			continue
		}
		failures = 0
		go m.serveGuest(id, l)
		m.cfg.Log.Info("guest agent connected again", "session", id)
	}
}

// settled waits while a park or an rm of session id holds l (deleting),
// and reports whether l is still the session's running VM afterwards.
func (m *Manager) settled(id string, l *live) bool {
	for {
		m.mu.Lock()
		current, deleting := m.live[id] == l, l.deleting
		m.mu.Unlock()
		if !current {
			return false
		}
		if !deleting {
			return true
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-l.vm.Done():
			return false
		case <-m.stop:
			return false
		}
	}
}

// vmGone reports whether vm's VMM process has exited, waiting a moment
// for the exit to be noticed: a lost agent connection is often the first
// sign of it.
func vmGone(vm vmm.VM) bool {
	select {
	case <-vm.Done():
		return true
	case <-time.After(100 * time.Millisecond):
		return false
	}
}

func (m *Manager) fail(id, msg string) {
	ctx := context.Background()
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return
	}
	rec.State, rec.Error, rec.UpdatedAt = api.StateFailed, msg, time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
		m.cfg.Log.Error("record failure", "session", id, "err", err)
		m.recordFollows(rec)
	}
}

func notFound(id string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return api.Errorf(api.CodeNotFound, "session %q not found", id)
	}
	return fmt.Errorf("session: %s: %w", id, err)
}

// Get returns a session.
func (m *Manager) Get(ctx context.Context, id string) (api.Session, error) {
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return api.Session{}, notFound(id, err)
	}
	s := m.toAPI(rec)
	s.Waiting = m.waiting(ctx, id)
	return s, nil
}

// List returns all sessions, oldest first.
func (m *Manager) List(ctx context.Context) ([]api.Session, error) {
	recs, err := m.cfg.Store.ListSessions(ctx)
	if err != nil {
		return nil, fmt.Errorf("session: list: %w", err)
	}
	return m.listed(ctx, recs, true)
}

// MaxPage is the most sessions one page of ListPage holds.
const MaxPage = 1000

// ListPage returns a page of at most limit sessions (1 to MaxPage) in
// List's order, after the position the cursor token after names ("" for
// the first page), and the token of the next page ("" after the last).
// The order is stable across pages: a session there throughout is listed
// once, whatever is created or removed meanwhile.
func (m *Manager) ListPage(ctx context.Context, after string, limit int) ([]api.Session, string, error) {
	if limit < 1 || limit > MaxPage {
		return nil, "", api.Errorf(api.CodeInvalid, "limit %d: want 1 to %d", limit, MaxPage)
	}
	cur, err := decodeCursor(after)
	if err != nil {
		return nil, "", err
	}
	recs, err := m.cfg.Store.ListSessionsAfter(ctx, cur, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("session: list: %w", err)
	}
	next := ""
	if len(recs) > limit {
		recs = recs[:limit]
		last := recs[limit-1]
		next = encodeCursor(store.SessionCursor{CreatedAt: last.CreatedAt, ID: last.ID})
	}
	out, err := m.listed(ctx, recs, false)
	return out, next, err
}

// encodeCursor is the page token of position c: "NANOS.ID" ("-" for a
// zero time), base64url.
func encodeCursor(c store.SessionCursor) string {
	at := "-"
	if !c.CreatedAt.IsZero() {
		at = strconv.FormatInt(c.CreatedAt.UnixNano(), 10)
	}
	return base64.RawURLEncoding.EncodeToString([]byte(at + "." + c.ID))
}

// decodeCursor undoes encodeCursor; "" is the list's start, anything
// else not made by encodeCursor a 400.
func decodeCursor(tok string) (store.SessionCursor, error) {
	if tok == "" {
		return store.SessionCursor{}, nil
	}
	bad := api.Errorf(api.CodeInvalid, "after %q: not a page token (use the next one a page of the list gave)", tok)
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return store.SessionCursor{}, bad
	}
	at, id, ok := strings.Cut(string(b), ".")
	if !ok || id == "" {
		return store.SessionCursor{}, bad
	}
	c := store.SessionCursor{ID: id}
	if at != "-" {
		n, err := strconv.ParseInt(at, 10, 64)
		if err != nil {
			return store.SessionCursor{}, bad
		}
		c.CreatedAt = time.Unix(0, n).UTC()
	}
	return c, nil
}

// listed is recs as the API shows them, with what each parked one waits
// for: read for all at once (all, the whole list) or for each (a page).
func (m *Manager) listed(ctx context.Context, recs []store.Session, all bool) ([]api.Session, error) {
	parked := func(r store.Session) bool { return r.State == api.StateParked || r.State == api.StateParking }
	subs := map[string]store.Subscription{}
	switch {
	case all && slices.ContainsFunc(recs, parked):
		// One query for every parked session's subscription.
		list, err := m.cfg.Store.ListSubscriptions(ctx)
		if err != nil {
			return nil, fmt.Errorf("session: list: %w", err)
		}
		for _, sub := range list {
			subs[sub.SessionID] = sub
		}
	case !all:
		for _, r := range recs {
			if !parked(r) {
				continue
			}
			sub, err := m.cfg.Store.GetSubscription(ctx, r.ID)
			switch {
			case err == nil:
				subs[r.ID] = sub
			case !errors.Is(err, store.ErrNotFound):
				return nil, fmt.Errorf("session: list: %w", err)
			}
		}
	}
	out := make([]api.Session, 0, len(recs))
	for _, r := range recs {
		s := m.toAPI(r)
		if sub, ok := subs[r.ID]; ok && parked(r) {
			s.Waiting = waitingOf(sub)
		}
		out = append(out, s)
	}
	return out, nil
}

// Delete stops the session's VM, removes its files and its record.
func (m *Manager) Delete(ctx context.Context, id string) error {
	unlock := m.lock(id)
	defer unlock()
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return notFound(id, err)
	}
	m.stopUpload(id) // its files are about to go
	m.mu.Lock()
	l := m.live[id]
	if l != nil {
		l.deleting = true
	}
	m.mu.Unlock()
	if rec.State != api.StateStopping {
		rec.State, rec.UpdatedAt = api.StateStopping, time.Now().UTC()
		if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
			if l != nil {
				m.undelete(l) // refused before anything was done: it runs on
			}
			return fmt.Errorf("session: delete %s: %w", id, err)
		}
	}
	m.crashPoint("rm.recorded")
	if l != nil {
		l.client().Close()
		if err := l.vm.Stop(ctx); err != nil {
			return fmt.Errorf("session: delete %s: %w", id, err)
		}
		m.mu.Lock()
		if m.live[id] == l {
			delete(m.live, id)
		}
		m.mu.Unlock()
	}
	if err := m.removeStopped(ctx, rec); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.locks, id)
	delete(m.guestRate, id)
	m.mu.Unlock()
	if rec.Template != "" {
		m.collectVersions(context.WithoutCancel(ctx), rec.Template)
	}
	m.cfg.Log.Info("session removed", "session", id)
	return nil
}

// removeStopped ends what is left of a session being deleted once the
// manager holds no VM of it: any VMM process, its files, its record and
// its triggers. A delete cut short by a crash is finished by it at
// recovery.
func (m *Manager) removeStopped(ctx context.Context, rec store.Session) error {
	id := rec.ID
	m.killLeftover(ctx, rec)
	m.killStray(ctx, id)
	m.crashPoint("rm.stopped")
	// A checkpoint's RAM re-encoding runs without the session's lock
	// (memchain.go) and may create its temp file in a checkpoint's dir
	// while the dir is removed: it finds the dir gone once it records,
	// and another pass removes what it left.
	var err error
	for range 20 {
		if err = os.RemoveAll(m.dir(id)); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("session: delete %s: remove files: %w", id, err)
	}
	m.crashPoint("rm.files-removed")
	if err := m.cfg.Store.DeleteSession(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("session: delete %s: %w", id, err)
	}
	m.dropTriggers(ctx, id)
	return nil
}

// killStray has the driver kill every VMM process of session id under the
// sessions dir, and waits for them to exit: processes no handle names (a
// VMM started for a create, a wake or a clone cut short before it was
// recorded).
func (m *Manager) killStray(ctx context.Context, id string) {
	for _, pid := range m.cfg.Driver.KillVMs(ctx, m.cfg.Dir, func(vm string) bool { return vm == id }) {
		m.cfg.Log.Warn("killed a VMM process no record names", "session", id, "pid", pid)
	}
}

// killLeftover stops a VM the manager does not hold (a failed session
// whose VM could not be adopted, say) if its process still runs.
func (m *Manager) killLeftover(ctx context.Context, rec store.Session) {
	if len(rec.Handle) == 0 {
		return
	}
	if vm, err := m.cfg.Driver.Adopt(ctx, rec.Handle); err == nil {
		_ = vm.Stop(ctx)
	}
}

// Recover re-adopts the VMs of sessions recorded as running (after a
// server restart), marks those it cannot re-adopt failed, and kills QEMU
// processes under the session dir that no session owns.
func (m *Manager) Recover(ctx context.Context) error {
	m.cfg.Log.Info("session manager starting", "server", m.cfg.ServerID)
	recs, err := m.cfg.Store.ListSessions(ctx)
	if err != nil {
		return fmt.Errorf("session: recover: %w", err)
	}
	known := map[string]bool{}
	// others are the sessions another node holds: not this server's to
	// adopt, nor to kill a VM of (a node renamed on this host, --node-name,
	// leaves its sessions' VMs running here, unadopted).
	others := map[string]bool{}
	for _, rec := range recs {
		known[rec.ID] = true
		// Only the embedded node's sessions are this server's to adopt;
		// those from before nodes are its too.
		if m.cfg.NoNode {
			others[rec.ID] = true
			continue
		}
		if m.cfg.Node != "" {
			m.adoptLegacy(ctx, &rec)
			if !m.holds(rec, m.cfg.Node) {
				others[rec.ID] = true
				continue
			}
		}
		switch rec.State {
		case api.StateRunning:
			start := time.Now()
			// A checkpoint cut short may have left the guest paused.
			mach, _ := decodeMachine(rec.Snapshot)
			err := m.readopt(ctx, rec, mach.NextDisk != "")
			if err != nil {
				m.cfg.Log.Warn("session lost across restart", "session", rec.ID, "err", err)
				m.fail(rec.ID, "lost across server restart: "+err.Error())
			} else {
				m.cfg.Log.Info("session re-adopted", "session", rec.ID)
			}
			m.doneEvent(ctx, Event{Kind: EventRecover, Cause: CauseRestart, Session: rec.ID}, start, err)
		case api.StateParking:
			m.recoverParking(ctx, rec)
		case api.StateWaking:
			m.recoverWaking(ctx, rec)
		case api.StateCreating:
			// The boot never finished: nothing of it is kept.
			m.killLeftover(ctx, rec)
			m.killStray(ctx, rec.ID)
			os.RemoveAll(m.dir(rec.ID))
			m.fail(rec.ID, "server stopped while the session was being created; nothing of it was kept")
		case api.StateStopping:
			// Finish the delete.
			if err := m.removeStopped(ctx, rec); err != nil {
				m.fail(rec.ID, "server stopped while the session was being removed, and finishing that failed: "+err.Error())
			} else {
				delete(known, rec.ID)
				m.cfg.Log.Info("removal cut short by a server stop: finished", "session", rec.ID)
			}
		}
	}
	m.recoverCheckpoints(ctx, recs)
	// VMM processes of sessions with no live VM here: no record owns
	// them, or their session failed. Their spare directories and cgroups
	// go with them.
	m.mu.Lock()
	alive := others
	for id := range m.live {
		alive[id] = true
	}
	m.mu.Unlock()
	if sw, ok := m.cfg.Driver.(vmm.Sweeper); ok {
		sw.Sweep(m.cfg.Dir, func(id string) bool { return alive[id] })
	}
	// Session dirs without a record (warm pool clones, a create cut
	// short) hold a disk and a memory file: remove them.
	if ents, err := os.ReadDir(m.cfg.Dir); err == nil {
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "s-") && !known[e.Name()] {
				m.cfg.Log.Warn("removing orphan session dir", "dir", e.Name())
				os.RemoveAll(filepath.Join(m.cfg.Dir, e.Name()))
			}
		}
	}
	if err := m.loadSubscriptions(ctx); err != nil {
		return err
	}
	m.resetCloneFiles()
	m.bg.Add(2)
	go m.deliverLoop()
	go m.cloneFilesLoop()
	if m.snap != nil {
		// Sessions idle past their timeout are parked: no API call for
		// that long and nothing in flight (parkIdle).
		m.every(time.Second, func(context.Context) { m.parkIdle(context.Background()) })
	}
	if m.cfg.Objects != nil && m.cfg.GCInterval > 0 {
		m.every(m.cfg.GCInterval, func(ctx context.Context) { _, _ = m.CollectGarbage(ctx) })
	}
	m.startNodeLoops()
	if feed, ok := m.raw.(store.SessionFeed); ok {
		m.bg.Add(1)
		go m.followOthers(feed)
	}
	if m.cfg.IdempotencyTTL > 0 {
		m.every(keySweepEvery(m.cfg.IdempotencyTTL), func(context.Context) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			m.SweepIdempotencyKeys(ctx)
		})
	}
	m.kickDeliveries() // deliveries left pending by the last server
	if err := m.recoverTemplates(ctx); err != nil {
		return err
	}
	// A driver that keeps VMM processes started ahead starts one for the
	// default machine now, so the first wake finds it.
	if p, ok := m.cfg.Driver.(interface{ Prewarm(memMiB, cpus int) }); ok && !m.cfg.NoNode {
		p.Prewarm(m.cfg.DefaultMemoryMiB, m.cfg.DefaultCPUs)
	}
	// Template versions, and parked sessions, whose upload a stop cut
	// short (or never began).
	m.uploadVersions(ctx)
	m.uploadParked(ctx)
	m.startCache()
	return m.startPools(ctx)
}

// readopt re-adopts the VM of a session recorded with a handle, connects
// to its agent and records the session running. With resume, a guest
// left paused (by a save or a restore cut short) is let run first: its
// agent cannot answer before.
func (m *Manager) readopt(ctx context.Context, rec store.Session, resume bool) error {
	if len(rec.Handle) == 0 {
		return errors.New("no VM was recorded")
	}
	vm, err := m.cfg.Driver.Adopt(ctx, rec.Handle)
	if err != nil {
		return err
	}
	if resume {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := vm.Resume(rctx)
		cancel()
		if err != nil {
			_ = vm.Stop(ctx)
			return fmt.Errorf("resume: %w", err)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	agent, err := m.connect(cctx, vm)
	if err != nil {
		_ = vm.Stop(ctx)
		return fmt.Errorf("agent did not answer: %w", err)
	}
	mach, _ := decodeMachine(rec.Snapshot)
	mach.Parked = nil
	// A wake cut short after its guest ran, from a rollback's record: the
	// guest is yet to be told (see guestckpt.go).
	restore := mach.Restore
	mach.Restore = nil
	settled, err := m.settleDisk(ctx, rec.ID, vm, &mach)
	if err != nil {
		m.cfg.Log.Warn("a checkpoint cut short by a server stop: the VM does not say which disk it writes; both are kept until it does", "session", rec.ID, "err", err)
	}
	m.adoptLive(rec.ID, &live{vm: vm, agent: agent, env: rec.Env, mach: mach, restore: restore})
	if rec.State != api.StateRunning || settled || restore != nil {
		rec.State, rec.Error, rec.UpdatedAt, rec.Snapshot = api.StateRunning, "", time.Now().UTC(), mach.encode()
		rec.StoredManifest, rec.StoredBytes = "", 0 // its snapshot is consumed
		if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
			return err
		}
	}
	return nil
}

// Close lets go of the running VMs without stopping them: the next server
// adopts them (see Recover).
func (m *Manager) Close() {
	m.stopLoops()
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, l := range m.live {
		l.deleting = true // their QEMU processes keep running
		l.client().Close()
		_ = l.vm.Release()
		delete(m.live, id)
	}
}

// StopAll stops every running VM (used by tests and 'cove server
// --stop-on-exit'); sessions are marked failed with a clear reason.
func (m *Manager) StopAll(ctx context.Context) {
	m.stopLoops()
	m.mu.Lock()
	ls := make(map[string]*live, len(m.live))
	for id, l := range m.live {
		l.deleting = true
		ls[id] = l
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for id, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.client().Close()
			_ = l.vm.Stop(ctx)
			m.fail(id, "stopped with the server")
		}()
	}
	wg.Wait()
}

// waitRunning waits until the session has a running VM (after a wake)
// and returns it. It fails when the session is gone or failed.
func (m *Manager) waitRunning(ctx context.Context, id string) (*live, error) {
	for {
		m.mu.Lock()
		l := m.live[id]
		if l != nil && l.deleting {
			l = nil
		}
		ch := m.woke[id]
		if ch == nil {
			ch = make(chan struct{})
			m.woke[id] = ch
		}
		m.mu.Unlock()
		if l != nil {
			return l, nil
		}
		rec, err := m.cfg.Store.GetSession(ctx, id)
		if err != nil {
			return nil, notFound(id, err)
		}
		if cannotServe(rec.State) {
			msg := fmt.Sprintf("session %s is %s", id, rec.State)
			if rec.Error != "" {
				msg += ": " + rec.Error
			}
			return nil, api.Errorf(api.CodeConflict, "%s", msg)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// cannotServe reports whether a session in state has no VM to serve a
// call and gets none without being asked: it is being removed (stopping),
// its VM failed, or its node was lost. A call that needs its VM is
// refused (409) instead of waited for or woken, and an event for it is
// not delivered.
func cannotServe(state string) bool {
	return state == api.StateStopping || state == api.StateFailed || state == api.StateLost
}

// every runs fn every d, in a background loop of its own, until the
// manager stops; fn's context ends then too (one that must finish its
// work makes its own). A run is not started while the one before runs.
func (m *Manager) every(d time.Duration, fn func(context.Context)) {
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		ctx, cancel := m.untilStop()
		defer cancel()
		tick := time.NewTicker(d)
		defer tick.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
			fn(ctx)
		}
	}()
}

// untilStop is a context that ends when the manager stops (or cancel is
// called).
func (m *Manager) untilStop() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-m.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// stopLoops ends the background loops (idle parking, pool refills) once.
func (m *Manager) stopLoops() {
	m.mu.Lock()
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	m.mu.Unlock()
	m.stopUploads() // the next server uploads those snapshots again
	m.bg.Wait()
	m.stopEncodes()
}

// agent returns the live agent of a running session, waking a parked one
// first unless it has auto-wake off. It counts as API activity.
func (m *Manager) agent(ctx context.Context, id string) (*live, error) {
	if err := m.frozenErr(id); err != nil {
		return nil, err
	}
	m.mu.Lock()
	l := m.live[id]
	if l != nil && l.deleting {
		// Being parked or removed: the store says which, and a park is
		// waited for (Wake takes the session's lock) and undone.
		l = nil
	}
	m.mu.Unlock()
	if l != nil {
		l.touch()
		return l, nil
	}
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return nil, notFound(id, err)
	}
	if (rec.State == api.StateParked || rec.State == api.StateParking || rec.State == api.StateWaking) && !rec.NoAutoWake {
		if _, err := m.wake(ctx, id, CauseExec, ""); err != nil && !api.IsCode(err, api.CodeConflict) {
			return nil, err
		}
		m.mu.Lock()
		l = m.live[id]
		if l != nil && l.deleting {
			l = nil
		}
		m.mu.Unlock()
		if l != nil {
			l.touch()
			return l, nil
		}
		if rec, err = m.cfg.Store.GetSession(ctx, id); err != nil {
			return nil, notFound(id, err)
		}
	}
	msg := fmt.Sprintf("session %s is %s", id, rec.State)
	if rec.Error != "" {
		msg += ": " + rec.Error
	}
	if rec.NoAutoWake && (rec.State == api.StateParked || rec.State == api.StateParking) {
		msg += fmt.Sprintf(" and has auto-wake off: wake it first (cove wake %s)", id)
	}
	return nil, api.Errorf(api.CodeConflict, "%s", msg)
}

// envList merges session and request env into KEY=VALUE form, sorted.
func envList(base, extra map[string]string) []string {
	merged := map[string]string{}
	for k, v := range base {
		merged[k] = v
	}
	for k, v := range extra {
		merged[k] = v
	}
	out := make([]string, 0, len(merged))
	for k, v := range merged {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

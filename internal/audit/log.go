package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"
)

// ErrUnavailable is wrapped by every error of an Append that did not
// durably sequence its entry: the log is closed, its directory cannot be
// written (full, read-only, removed), or the append ran out of time. A
// caller refuses the action it announced (the API answers 503).
var ErrUnavailable = errors.New("audit log unavailable")

// ErrNotCommitted is returned for an index that no published checkpoint
// covers yet (checkpoints follow appends by at most CheckpointInterval).
var ErrNotCommitted = errors.New("audit: entry not yet covered by a checkpoint")

// Defaults for Options.
const (
	DefaultCheckpointInterval = time.Second
	DefaultBatchMaxAge        = 200 * time.Microsecond
	DefaultBatchMaxSize       = 256
	DefaultAppendTimeout      = 10 * time.Second
)

// Options tune Open. The zero value is good.
type Options struct {
	// Origin names the log in its checkpoints; default "cove.audit/<hostname>".
	// It is the signing key's name, so it is only used when the key is
	// created; a different one given for an existing key is an error.
	Origin string
	// KeyPath is the signing key's file; default DefaultKeyPath(dir).
	KeyPath string
	// CheckpointInterval is how often a grown log gets a new signed
	// checkpoint; default 1 s (never over 2 s: Open refuses more).
	CheckpointInterval time.Duration
	// BatchMaxAge is how long tessera waits, after the first entry of a
	// group, before it sequences the group; default 200 µs. Groups are
	// formed by Append (see there), so this only needs to cover a burst.
	BatchMaxAge time.Duration
	// BatchMaxSize sequences a batch at once when it reaches this many
	// entries; default 256.
	BatchMaxSize uint
	// AppendTimeout bounds an Append whose ctx has no earlier deadline;
	// default 10 s.
	AppendTimeout time.Duration
	// Log receives warnings; default slog.Default().
	Log *slog.Logger
	// CrashPoint, if set, is called with "audit.appended" once an entry is
	// durably sequenced, before Append returns: the crash-safety tests
	// kill the server there (cmd/cove's COVE_TEST_CRASH_AT).
	CrashPoint func(name string)
}

// Log is an open audit log. Its methods are safe for concurrent use.
type Log struct {
	dir       string
	signer    note.Signer
	verifier  note.Verifier
	vkey      string
	add       tessera.AddFn
	reader    tessera.LogReader
	shutdown  func(context.Context) error
	stop      context.CancelFunc // stops tessera's background work
	lock      *os.File           // flock'ed: one process appends to dir
	appendTTL time.Duration
	log       *slog.Logger
	crash     func(string)

	submit    chan pending  // to the committer; closed by Close
	committed chan struct{} // closed when the committer is done

	mu     sync.RWMutex
	closed bool // guarded by mu
}

// lockName is the file in dir/.state that Open flocks, so that a second
// cove on the same directory is refused rather than interleaved. (tessera's
// own fcntl locks serialise its writers but not two sequencers' views.)
const lockName = "cove.lock"

// Open opens the log in dir, creating it and its signing key when absent.
// ctx bounds the opening only; the log runs until Close.
func Open(ctx context.Context, dir string, opts Options) (*Log, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if opts.KeyPath == "" {
		o.KeyPath = DefaultKeyPath(dir)
	}
	if err := os.MkdirAll(filepath.Join(dir, ".state"), 0o755); err != nil {
		return nil, fmt.Errorf("audit: open %s: %w: %w", dir, ErrUnavailable, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	l, err := open(ctx, dir, o, lock)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return l, nil
}

func (o Options) withDefaults() (Options, error) {
	if o.Origin == "" {
		host, err := os.Hostname()
		if err != nil {
			return o, fmt.Errorf("audit: origin: %w", err)
		}
		o.Origin = "cove.audit/" + host
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = DefaultCheckpointInterval
	}
	if o.CheckpointInterval > 2*time.Second {
		return o, fmt.Errorf("audit: checkpoint interval %v is over 2s", o.CheckpointInterval)
	}
	if o.BatchMaxAge == 0 {
		o.BatchMaxAge = DefaultBatchMaxAge
	}
	if o.BatchMaxSize == 0 {
		o.BatchMaxSize = DefaultBatchMaxSize
	}
	if o.AppendTimeout == 0 {
		o.AppendTimeout = DefaultAppendTimeout
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return o, nil
}

func lockDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, ".state", lockName)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w: %w", dir, ErrUnavailable, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: open %s: another process has the log open: %w", dir, err)
	}
	return f, nil
}

func open(ctx context.Context, dir string, o Options, lock *os.File) (*Log, error) {
	signer, err := loadOrCreateKey(o.KeyPath, o.Origin)
	if err != nil {
		return nil, err
	}
	skey, err := readKeyFile(o.KeyPath)
	if err != nil {
		return nil, err
	}
	vkey, err := verifierKey(skey)
	if err != nil {
		return nil, err
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("audit: verifier: %w", err)
	}
	driver, err := posix.New(ctx, posix.Config{Path: dir})
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", dir, err)
	}
	// No antispam: every entry is its own record, and two identical
	// entries (same time, actor, action) are two events, not one.
	// No witnesses yet (issue 17 adds them).
	aopts := tessera.NewAppendOptions().
		WithCheckpointSigner(signer).
		WithCheckpointInterval(o.CheckpointInterval).
		WithBatching(o.BatchMaxSize, o.BatchMaxAge).
		WithShutdownTimeout(o.CheckpointInterval*2 + 5*time.Second)
	// Background work outlives ctx, which bounds only the opening.
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	app, shutdown, reader, err := tessera.NewAppender(bg, driver, aopts)
	if err != nil {
		stop()
		return nil, fmt.Errorf("audit: open %s: %w", dir, err)
	}
	l := &Log{
		dir:       dir,
		signer:    signer,
		verifier:  verifier,
		vkey:      vkey,
		add:       app.Add,
		reader:    reader,
		shutdown:  shutdown,
		stop:      stop,
		lock:      lock,
		appendTTL: o.AppendTimeout,
		log:       o.Log,
		crash:     o.CrashPoint,
		submit:    make(chan pending, 4*o.BatchMaxSize),
		committed: make(chan struct{}),
	}
	go l.commit(bg, int(o.BatchMaxSize))
	return l, nil
}

// VerifierKey returns the note verifier key of the log's checkpoints, what
// `cove audit key` prints and `cove audit verify --key` takes.
func (l *Log) VerifierKey() string { return l.vkey }

// Origin returns the log's name in its checkpoints.
func (l *Log) Origin() string { return l.signer.Name() }

// Append logs e and returns its index once the entry is durably sequenced:
// with the POSIX driver, its entry bundle, the hash tiles and the tree
// state have each been written with O_SYNC to a temporary file, renamed into
// place, and their directory fsynced. A checkpoint that commits to it is
// published within Options.CheckpointInterval (see WaitCheckpoint).
//
// A zero e.Time is set to now. Concurrent appends are committed in groups:
// those that arrive while a group is being written go together in the
// next. Any error but an invalid entry (ErrInvalidEntry) wraps
// ErrUnavailable, and then the caller must not perform the action. An
// append that is cancelled or times out may still be sequenced later: an
// announcement without an outcome entry is an action that did not happen,
// or whose end was not seen.
func (l *Log) Append(ctx context.Context, e Entry) (uint64, error) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	data, err := e.Marshal()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, l.appendTTL)
	defer cancel()
	p := pending{data: data, done: make(chan result, 1)}

	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return 0, fmt.Errorf("audit: append %s: log closed: %w", e.Action, ErrUnavailable)
	}
	select {
	case l.submit <- p:
		l.mu.RUnlock()
	case <-ctx.Done():
		l.mu.RUnlock()
		return 0, fmt.Errorf("audit: append %s: %w: %w", e.Action, ErrUnavailable, ctx.Err())
	}
	select {
	case r := <-p.done:
		if r.err != nil {
			return 0, fmt.Errorf("audit: append %s: %w: %w", e.Action, ErrUnavailable, r.err)
		}
		if l.crash != nil {
			l.crash("audit.appended")
		}
		return r.idx, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("audit: append %s: %w: %w", e.Action, ErrUnavailable, ctx.Err())
	}
}

type pending struct {
	data []byte
	done chan result // buffered: the committer never waits on an Append gone
}

type result struct {
	idx uint64
	err error
}

// commit hands tessera groups of entries, one group at a time: all the
// entries waiting when the previous group is durable go in one burst,
// which tessera sequences as one batch (BatchMaxAge after its first entry,
// or at once at BatchMaxSize). An idle log thus writes an entry after
// BatchMaxAge, and a busy one writes many per flush.
func (l *Log) commit(ctx context.Context, maxGroup int) {
	defer close(l.committed)
	group := make([]pending, 0, maxGroup)
	futures := make([]tessera.IndexFuture, 0, maxGroup)
	for {
		p, ok := <-l.submit
		if !ok {
			return
		}
		group = append(group[:0], p)
	drain:
		for len(group) < maxGroup {
			select {
			case p, ok := <-l.submit:
				if !ok {
					break drain
				}
				group = append(group, p)
			default:
				break drain
			}
		}
		futures = futures[:0]
		for _, p := range group {
			futures = append(futures, l.add(ctx, tessera.NewEntry(p.data)))
		}
		var failed error
		for i, f := range futures {
			idx, err := f()
			if err != nil {
				failed = err
			}
			group[i].done <- result{idx.Index, err}
		}
		if failed != nil {
			l.log.Warn("audit: appends refused: the log cannot be written", "dir", l.dir, "entries", len(group), "err", failed)
		}
	}
}

// Close publishes a checkpoint that commits to every entry appended, then
// stops the log. Appends after Close fail with ErrUnavailable.
func (l *Log) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.submit)
	l.mu.Unlock()
	var err error
	select {
	case <-l.committed:
		err = l.shutdown(ctx)
	case <-ctx.Done():
		err = fmt.Errorf("appends still in flight: %w", ctx.Err())
	}
	l.stop()
	l.lock.Close()
	if err != nil {
		return fmt.Errorf("audit: close %s: %w", l.dir, err)
	}
	return nil
}

// Record is an entry read back from the log.
type Record struct {
	Index    uint64
	Entry    Entry
	Data     []byte // the canonical JSON, as logged
	LeafHash []byte // RFC 6962 leaf hash of Data
}

// Size returns the number of entries durably sequenced.
func (l *Log) Size(ctx context.Context) (uint64, error) {
	n, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		return 0, fmt.Errorf("audit: size: %w", err)
	}
	return n, nil
}

// Entries returns up to n entries from index from on, in order, among those
// durably sequenced (which a checkpoint may not cover yet).
func (l *Log) Entries(ctx context.Context, from uint64, n int) ([]Record, error) {
	size, err := l.Size(ctx)
	if err != nil {
		return nil, err
	}
	var out []Record
	for i := from; i < size && len(out) < n; {
		bundle, err := readBundle(ctx, l.reader.ReadEntryBundle, i/bundleWidth, size)
		if err != nil {
			return nil, fmt.Errorf("audit: entries from %d: %w", i, err)
		}
		for j := i % bundleWidth; j < uint64(len(bundle)) && len(out) < n; j++ {
			idx := i - i%bundleWidth + j
			e, err := ParseEntry(bundle[j])
			if err != nil {
				return nil, fmt.Errorf("audit: entry %d: %w", idx, err)
			}
			out = append(out, Record{Index: idx, Entry: e, Data: bundle[j], LeafHash: rfc6962.DefaultHasher.HashLeaf(bundle[j])})
		}
		i = i - i%bundleWidth + bundleWidth
	}
	return out, nil
}

// Filter picks entries for Scan; an empty field matches all.
type Filter struct {
	Session string    // the actor's or the target's session
	Actor   string    // the actor's subject, user or agent
	Since   time.Time // at or after
}

// Match says whether e passes f.
func (f Filter) Match(e Entry) bool {
	if f.Session != "" && e.Actor.Session != f.Session && e.Target.Session != f.Session {
		return false
	}
	if f.Actor != "" && e.Actor.Subject != f.Actor && e.Actor.User != f.Actor && e.Actor.Agent != f.Actor {
		return false
	}
	return f.Since.IsZero() || !e.Time.Before(f.Since)
}

// Scan calls fn on each entry from index from on that f matches, in order,
// until fn returns an error (which Scan returns) or the entries sequenced
// when Scan began are done.
func (l *Log) Scan(ctx context.Context, from uint64, f Filter, fn func(Record) error) error {
	size, err := l.Size(ctx)
	if err != nil {
		return err
	}
	for from < size {
		recs, err := l.Entries(ctx, from, int(min(size-from, bundleWidth)))
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			return nil
		}
		for _, r := range recs {
			if f.Match(r.Entry) {
				if err := fn(r); err != nil {
					return err
				}
			}
		}
		from = recs[len(recs)-1].Index + 1
	}
	return nil
}

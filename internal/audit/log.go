package audit

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
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
	DefaultBatchMaxAge        = 10 * time.Millisecond
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
	// BatchMaxAge is how long tessera waits, after the first entry the
	// integrator hands it, before it adds what it was handed to the tree;
	// default 10 ms. It delays only reading an entry, not Append. It
	// must be far longer than handing over one chunk (4096 entries at
	// most) takes: tessera's queue, flushed by a timer twice in that
	// time, could sequence the two flushes out of order.
	BatchMaxAge time.Duration
	// BatchMaxSize is the most entries Append journals with one write;
	// default 256.
	BatchMaxSize uint
	// AppendTimeout bounds an Append whose ctx has no earlier deadline;
	// default 10 s.
	AppendTimeout time.Duration
	// WitnessTimeout bounds how long a checkpoint waits for its witnesses
	// (see AddWitness); default DefaultWitnessTimeout. A checkpoint that
	// some witness did not co-sign in time is published without that
	// cosignature, and a warning logged: the log goes on, and `cove audit
	// verify --witness` refuses the checkpoint.
	WitnessTimeout time.Duration
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
	witnesses *witnessSet
	appendTTL time.Duration
	log       *slog.Logger
	crash     func(string)

	submit    chan pending  // to the committer; closed by Close
	closing   chan struct{} // closed by Close: a failing integration stops retrying
	integrate chan batch    // journaled groups, to the integrator; closed by the committer
	committed chan struct{} // closed when the integrator is done
	journal   *journal

	next        atomic.Uint64 // the index the next journaled entry gets
	integrated  atomic.Uint64 // entries in tessera's tree
	progressMu  sync.Mutex
	progress    chan struct{}         // closed and replaced when integrated grows; guarded by progressMu
	intErr      atomic.Pointer[error] // why integration fails now, or nil
	integrating atomic.Int64          // when the group being integrated began (unix ns), 0 when none

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
	if o.WitnessTimeout == 0 {
		o.WitnessTimeout = DefaultWitnessTimeout
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
	witnesses, err := loadWitnesses(WitnessesPath(dir))
	if err != nil {
		return nil, err
	}
	driver, err := posix.New(ctx, posix.Config{Path: dir})
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", dir, err)
	}
	// No antispam: every entry is its own record, and two identical
	// entries (same time, actor, action) are two events, not one.
	// The witnesses are asked before each checkpoint is published: fail
	// open, so that a witness down stops neither the log nor the actions
	// waiting on it; a verifier that requires the witness refuses the
	// checkpoints it did not co-sign.
	aopts := tessera.NewAppendOptions().
		WithCheckpointSigner(signer).
		WithWitnesses(tessera.NewWitnessGroup(1, witnesses), &tessera.WitnessOptions{Timeout: o.WitnessTimeout, FailOpen: true}).
		WithCheckpointInterval(o.CheckpointInterval).
		// Never flushed by size: a flush by size from the integrator and
		// one by the timer could reach the sequencer in either order.
		WithBatching(integrateMax+1, o.BatchMaxAge).
		WithShutdownTimeout(o.CheckpointInterval*2 + 5*time.Second)
	// Background work outlives ctx, which bounds only the opening.
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	app, shutdown, reader, err := tessera.NewAppender(bg, driver, aopts)
	if err != nil {
		stop()
		return nil, fmt.Errorf("audit: open %s: %w", dir, err)
	}
	j, recs, err := openJournal(filepath.Join(dir, ".state", journalName))
	if err != nil {
		stop()
		return nil, err
	}
	size, err := recoverJournal(ctx, app.Add, reader, recs, o.Log)
	if err != nil {
		j.close()
		stop()
		return nil, fmt.Errorf("audit: open %s: %w", dir, err)
	}
	if err := j.reset(func() bool { return true }); err != nil {
		j.close()
		stop()
		return nil, fmt.Errorf("audit: open %s: journal: %w: %w", dir, ErrUnavailable, err)
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
		witnesses: witnesses,
		appendTTL: o.AppendTimeout,
		log:       o.Log,
		crash:     o.CrashPoint,
		submit:    make(chan pending, 4*o.BatchMaxSize),
		closing:   make(chan struct{}),
		integrate: make(chan batch, 64),
		committed: make(chan struct{}),
		journal:   j,
		progress:  make(chan struct{}),
	}
	l.next.Store(size)
	l.integrated.Store(size)
	go l.commit(int(o.BatchMaxSize))
	go l.integrator(bg)
	return l, nil
}

// VerifierKey returns the note verifier key of the log's checkpoints, what
// `cove audit key` prints and `cove audit verify --key` takes.
func (l *Log) VerifierKey() string { return l.vkey }

// Origin returns the log's name in its checkpoints.
func (l *Log) Origin() string { return l.signer.Name() }

// Append logs e and returns its index once the entry is durably sequenced:
// written, with that index, to the log's journal by one synchronous write
// (O_DSYNC), which Open repairs from after a crash. Tessera integrates it
// into the tree within milliseconds (its POSIX driver writes the entry
// bundle, the hash tiles and the tree state each with O_SYNC to a
// temporary file, renamed into place, the directory fsynced); a checkpoint
// that commits to it is published within Options.CheckpointInterval (see
// WaitCheckpoint).
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

// journalMax bounds the journal: past it, the committer waits for the
// integrator to catch up, and empties it, before it writes more.
const journalMax = 16 << 20

// integrateMax bounds the entries the integrator hands tessera at once.
const integrateMax = 4096

// batch is a journaled group, for the integrator.
type batch struct {
	first uint64
	data  [][]byte
}

// commit journals groups of entries, one group at a time: all the entries
// waiting when the previous group is written go in one write, and one
// O_DSYNC. Then it answers their appenders and hands the group to the
// integrator.
func (l *Log) commit(maxGroup int) {
	defer close(l.integrate)
	group := make([]pending, 0, maxGroup)
	var buf []byte
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
		if err := l.healthy(); err != nil {
			// Refused rather than journaled: the journal would grow
			// without end, and the tree never show it.
			for _, p := range group {
				p.done <- result{err: err}
			}
			continue
		}
		if l.journal.bytes() > journalMax {
			ctx, cancel := context.WithTimeout(context.Background(), l.appendTTL)
			err := l.waitIntegrated(ctx, l.next.Load())
			cancel()
			if err != nil {
				for _, p := range group {
					p.done <- result{err: fmt.Errorf("the journal is full and the tree does not catch up: %w", err)}
				}
				continue
			}
			l.resetJournal()
		}
		first := l.next.Load()
		buf = buf[:0]
		data := make([][]byte, len(group))
		for i, p := range group {
			buf = appendRecord(buf, first+uint64(i), p.data)
			data[i] = p.data
		}
		err := l.journal.write(buf, func() { l.next.Store(first + uint64(len(group))) })
		if err != nil {
			l.log.Warn("audit: appends refused: the journal cannot be written", "dir", l.dir, "entries", len(group), "err", err)
		}
		for i, p := range group {
			if err != nil {
				p.done <- result{err: err}
			} else {
				p.done <- result{idx: first + uint64(i)}
			}
		}
		if err == nil {
			l.integrate <- batch{first: first, data: data}
		}
	}
}

// errMisnumbered stops integration for good: tessera gave an entry
// another index than the journal did (another writer in the directory).
var errMisnumbered = errors.New("tessera numbered an entry otherwise than the journal")

// integrator adds the journaled groups to tessera's tree, in order. A
// group that fails is tried again (50 ms, doubling to 2 s) from its first
// entry not in the tree; meanwhile appends are refused.
func (l *Log) integrator(ctx context.Context) {
	defer close(l.committed)
	for b := range l.integrate {
		// The groups journaled meanwhile go with it: tessera takes a
		// burst as one batch, so the tree keeps up with the journal.
	merge:
		for len(b.data) < integrateMax {
			select {
			case more, ok := <-l.integrate:
				if !ok {
					break merge
				}
				b.data = append(b.data, more.data...)
			default:
				break merge
			}
		}
		l.integrating.Store(time.Now().UnixNano())
		wait := 50 * time.Millisecond
		for len(b.data) > 0 {
			n, err := l.integrateBatch(ctx, b)
			b.first, b.data = b.first+uint64(n), b.data[n:]
			l.markIntegrated(b.first)
			if err == nil {
				l.intErr.Store(nil)
				break
			}
			l.intErr.Store(&err)
			if errors.Is(err, errMisnumbered) {
				l.log.Error("audit: the log is broken; appends are refused until the server restarts", "dir", l.dir, "err", err)
				break
			}
			l.log.Warn("audit: the tree cannot be written; appends are refused", "dir", l.dir, "pending", len(b.data), "retry_in", wait, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-l.closing:
				// Left in the journal, for the next Open.
				l.log.Warn("audit: closing with entries the tree could not take; the next start adds them from the journal", "dir", l.dir, "from", b.first)
				for range l.integrate {
				}
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, 2*time.Second)
		}
		l.integrating.Store(0)
		l.resetJournal()
	}
}

// integrateBatch adds b to tessera, at most integrateMax entries at a
// time, each chunk in the tree before the next is handed over, and returns
// how many of its first entries are in the tree.
func (l *Log) integrateBatch(ctx context.Context, b batch) (int, error) {
	done := 0
	for done < len(b.data) {
		chunk := b.data[done:min(len(b.data), done+integrateMax)]
		futures := make([]tessera.IndexFuture, len(chunk))
		for i, d := range chunk {
			futures[i] = l.add(ctx, tessera.NewEntry(d))
		}
		var failed error
		for i, f := range futures {
			want := b.first + uint64(done+i)
			idx, err := f()
			switch {
			case err != nil:
				failed = cmp.Or(failed, err)
			case failed != nil:
				// After a failure, an entry in the tree would be out of
				// the journal's order.
				return done, fmt.Errorf("%w: entry %d integrated after one failed", errMisnumbered, idx.Index)
			case idx.Index != want:
				return done, fmt.Errorf("%w: entry %d got index %d", errMisnumbered, want, idx.Index)
			}
		}
		if failed != nil {
			// The failed entry and those after it are not in the tree
			// (the ones before it are, counted below).
			n := 0
			for _, f := range futures {
				if _, err := f(); err != nil {
					break
				}
				n++
			}
			return done + n, failed
		}
		done += len(chunk)
	}
	return done, nil
}

// healthy says why the log refuses appends: its tree cannot be written,
// or has not taken a group for longer than the append timeout (another
// process holds its lock, a disk hangs).
func (l *Log) healthy() error {
	if p := l.intErr.Load(); p != nil {
		return fmt.Errorf("the log's tree cannot be written: %w", *p)
	}
	if since := l.integrating.Load(); since != 0 {
		if d := time.Since(time.Unix(0, since)); d > l.appendTTL {
			return fmt.Errorf("the log's tree has taken no entry for %v", d.Round(time.Millisecond))
		}
	}
	return nil
}

func (l *Log) markIntegrated(n uint64) {
	l.progressMu.Lock()
	defer l.progressMu.Unlock()
	if n <= l.integrated.Load() {
		return
	}
	l.integrated.Store(n)
	close(l.progress)
	l.progress = make(chan struct{})
}

// waitIntegrated waits until the tree holds n entries.
func (l *Log) waitIntegrated(ctx context.Context, n uint64) error {
	for {
		l.progressMu.Lock()
		ch := l.progress
		l.progressMu.Unlock()
		if l.integrated.Load() >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// resetJournal empties the journal if the tree holds all it has.
func (l *Log) resetJournal() {
	err := l.journal.reset(func() bool { return l.integrated.Load() == l.next.Load() })
	if err != nil {
		l.log.Warn("audit: journal: cannot empty it", "dir", l.dir, "err", err)
	}
}

// recoverJournal brings tessera's tree up to the journal: entries the
// tree holds must be the journal's; those beyond it are added in order.
// It returns the tree's size.
func recoverJournal(ctx context.Context, add tessera.AddFn, reader tessera.LogReader, recs []journalRecord, log *slog.Logger) (uint64, error) {
	size, err := reader.IntegratedSize(ctx)
	if err != nil {
		return 0, fmt.Errorf("size: %w", err)
	}
	var replay [][]byte
	bundles := map[uint64][][]byte{}
	for _, r := range recs {
		switch {
		case r.index < size:
			b := r.index / bundleWidth
			if bundles[b] == nil {
				if bundles[b], err = readBundle(ctx, reader.ReadEntryBundle, b, size); err != nil {
					return 0, fmt.Errorf("journal: check entry %d: %w", r.index, err)
				}
			}
			if !bytes.Equal(bundles[b][r.index%bundleWidth], r.data) {
				return 0, fmt.Errorf("journal: entry %d is not the one the log holds", r.index)
			}
		case r.index == size+uint64(len(replay)):
			replay = append(replay, r.data)
		default:
			return 0, fmt.Errorf("journal: entry %d follows a gap (the log holds %d entries, %d to add)", r.index, size, len(replay))
		}
	}
	if len(replay) == 0 {
		return size, nil
	}
	futures := make([]tessera.IndexFuture, len(replay))
	for i, d := range replay {
		futures[i] = add(ctx, tessera.NewEntry(d))
	}
	for i, f := range futures {
		idx, err := f()
		if err != nil {
			return 0, fmt.Errorf("journal: add entry %d: %w: %w", size+uint64(i), ErrUnavailable, err)
		}
		if idx.Index != size+uint64(i) {
			return 0, fmt.Errorf("journal: entry %d: %w: got %d", size+uint64(i), errMisnumbered, idx.Index)
		}
	}
	log.Info("audit: entries journaled before a crash added to the log", "from", size, "entries", len(replay))
	return size + uint64(len(replay)), nil
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
	close(l.closing)
	l.mu.Unlock()
	var err error
	select {
	case <-l.committed:
		err = l.shutdown(ctx)
	case <-ctx.Done():
		err = fmt.Errorf("appends still in flight: %w", ctx.Err())
	}
	l.stop()
	if jerr := l.journal.close(); err == nil && jerr != nil {
		err = fmt.Errorf("journal: %w", jerr)
	}
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

// sizeWait bounds how long Size waits for the tree to catch up with the
// journal.
const sizeWait = 5 * time.Second

// Size returns the number of entries durably sequenced and readable: it
// waits (5 s at most) until the tree holds every entry journaled when it
// was called, so that an entry whose Append returned can be read.
func (l *Log) Size(ctx context.Context) (uint64, error) {
	wctx, cancel := context.WithTimeout(ctx, sizeWait)
	_ = l.waitIntegrated(wctx, l.next.Load())
	cancel()
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
	return l.entries(ctx, from, n, size)
}

// entries is Entries within a tree of the given size, which the caller
// has already waited for (Size waits for the tree to take in the
// journal: Scan's pages must not each wait again).
func (l *Log) entries(ctx context.Context, from uint64, n int, size uint64) ([]Record, error) {
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
		recs, err := l.entries(ctx, from, int(min(size-from, bundleWidth)), size)
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

package session

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agentproto"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm"
)

// Park and wake.
//
// A session is parked by saving its whole VM (device state into a state
// file; RAM is already a sparse file in the session dir) and ending the
// QEMU process: a parked session holds no process and no RAM, only disk.
// Wake restores the VM in a fresh QEMU from those files, reconnects to the
// agent and says hello (which sets the guest clock and reseeds its RNG).
//
// Durability: the session is recorded parking before anything happens;
// the state file is written to a temp name, fsynced with the RAM file and
// renamed; only then is the session recorded parked, with a manifest of the
// files (sizes, the state file's SHA-256). A crash at any point leaves
// either a running VM (re-adopted) or a complete snapshot (recorded parked
// on recovery): see recoverParking. A wake verifies the manifest first; a
// missing or corrupt file fails the session with the reason, it is never
// silently rebooted.

// stateFile is the device state's name in a session dir.
const stateFile = "state"

// wokenFile is what a wake renames the state file to just before the
// guest runs: from then on the RAM file changes, and the snapshot is
// consumed. A session dir holding stateFile holds a snapshot whose guest
// never ran since; one holding wokenFile, one whose guest did.
const wokenFile = "state.woken"

// parkTimeout bounds a park's save: the device state's migration and the
// RAM file's sync.
const parkTimeout = 2 * time.Minute

const machineVersion = 1

// machine is what the session package records about a session's VM in
// store.Session.Snapshot: how to restore it, and its snapshot while parked.
type machine struct {
	V         int     `json:"v"`
	Kernel    string  `json:"kernel"`
	Initrd    string  `json:"initrd"`
	Disk      string  `json:"disk"`
	MemoryMiB int     `json:"memory_mib"`
	CPUs      int     `json:"cpus"`
	Parked    *parked `json:"parked,omitempty"`
	// NextDisk is set while a checkpoint is under way: the disk the VM
	// is being switched to (see checkpoint.go). A server that finds it
	// set after a crash asks the VM which disk it writes.
	NextDisk string `json:"next_disk,omitempty"`
	// Rollback is set while a rollback is under way: the directory that
	// holds the checkpoint's files staged for the session (rollback.go).
	Rollback string `json:"rollback,omitempty"`
	// GuestRequest, in a checkpoint's manifest, is the request of the
	// guest tool that asked for it ('cove-agent checkpoint'), which the
	// checkpoint's memory holds unanswered; 0 if the API asked.
	GuestRequest int64 `json:"guest_request,omitempty"`
	// Restore, in a session parked by a rollback to such a checkpoint, is
	// what its wake tells the guest (agentproto.OpRestored; see
	// guestckpt.go).
	Restore *agentproto.Restored `json:"restore,omitempty"`
	// LastStored is the last snapshot of the session stored in the
	// object store that a wake consumed since: what a session lost with
	// its node goes back to (lost.go). The object store keeps it.
	LastStored *lastStored `json:"last_stored,omitempty"`
	// MemFrom names the session's checkpoint whose RAM its RAM last was
	// (taken, or rolled back to): the base its next checkpoint's RAM is
	// re-encoded onto (memchain.go). In a checkpoint's manifest, the
	// session's at the time it was taken.
	MemFrom string `json:"mem_from,omitempty"`
	// FromHome is the home of the node a parked session moved from, set
	// where it differs from this node's (rehome), until the session runs
	// here: the disk restored from the object store names its backing
	// file under that home, and the wake rebases it (homes.go).
	FromHome string `json:"from_home,omitempty"`
}

// parked is the manifest of a parked session's snapshot.
type parked struct {
	State       string `json:"state"` // path of the device state file
	StateSHA256 string `json:"state_sha256"`
	StateBytes  int64  `json:"state_bytes"`
	Mem         string `json:"mem"` // path of the RAM file
	MemSize     int64  `json:"mem_size"`
	MemSum      string `json:"mem_sum,omitempty"` // see memChecksum; absent in manifests of older servers
	// MemFormat is "qcow2" where Mem is a checkpoint's RAM re-encoded
	// onto another's (memchain.go); "" for a raw RAM file.
	MemFormat  string    `json:"mem_format,omitempty"`
	DiskBytes  int64     `json:"disk_bytes"` // allocated: RAM file + state
	CreatedAt  time.Time `json:"created_at"`
	ParkMillis int64     `json:"park_ms"`
}

func (m machine) encode() []byte {
	b, _ := json.Marshal(m)
	return b
}

func decodeMachine(b []byte) (machine, error) {
	var m machine
	if len(b) == 0 {
		return m, errors.New("no machine record")
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("machine record: %w", err)
	}
	if m.V != machineVersion {
		return m, fmt.Errorf("machine record version %d, want %d", m.V, machineVersion)
	}
	return m, nil
}

// parkedMachine decodes a machine record that must hold a snapshot and
// checks the snapshot's files against its manifest.
func parkedMachine(b []byte) (machine, error) {
	mach, err := decodeMachine(b)
	if err == nil && mach.Parked == nil {
		err = errors.New("no snapshot recorded")
	}
	if err == nil {
		err = mach.Parked.verify()
	}
	return mach, err
}

// snapshotInfo describes a machine record's snapshot for the API, or nil
// when it has none.
func snapshotInfo(b []byte) *api.SnapshotInfo {
	mach, err := decodeMachine(b)
	if err != nil || mach.Parked == nil {
		return nil
	}
	p := mach.Parked
	return &api.SnapshotInfo{DiskBytes: p.DiskBytes, MemoryBytes: int64(mach.MemoryMiB) << 20,
		CreatedAt: p.CreatedAt, ParkMillis: p.ParkMillis}
}

// hangUp ends the session with the agent with its agreement (detach), for
// a save: the guest then waits for the next sync on the port, and Detach
// returns only once the guest says it does (its teardown is done before
// the save, not left for the wake path). The connection itself stays open
// until QEMU goes (its end closes the client), so the guest is saved with
// its host connected: the restore connects before it loads the state (see
// the QEMU driver's Restore), and the woken guest notices no hang-up or new
// connection, only the next sync on the port it reads — the least guest
// code on the wake path. If the guest does not agree in time, the
// connection is closed: the guest sees it end before the save.
//
// A guest that does not even answer the detach within limit, the agent's
// answer timeout (its agent frozen or wedged), is not saved: hangUp
// returns an error wrapping agentproto.ErrNoAnswer and the park is rolled
// back. (A limit of 5 s rolled back 1 park of 58 in a 10-minute soak: a
// guest slow under load, not frozen.)
//
// A guest that answers but does not settle in time is saved anyway, and
// log says so with what QEMU knows of it (its agent bounds its own
// write-back, so this is a guest stuck below the agent).
func (l *live) hangUp(ctx context.Context, limit time.Duration, log *slog.Logger) error {
	dctx, cancel := context.WithTimeout(ctx, limit)
	err := l.client().Detach(dctx)
	cancel()
	if err != nil && !errors.Is(err, agentproto.ErrNoAnswer) {
		log.Warn("the guest did not settle before its save; saving it as it is", "err", err, "vmm", l.vm.Diagnose(ctx))
	}
	if err != nil {
		// No answer: the guest may still act on the detach once it runs
		// again (slow under load), ending its side while this one stays
		// open and every later call on it goes unanswered. The
		// connection's state is unknown either way: end it; if the park
		// rolls back, the session's watcher connects again (a fresh
		// sync, whatever the guest did meanwhile).
		l.client().Close()
	}
	if errors.Is(err, agentproto.ErrNoAnswer) {
		return err
	}
	return nil
}

// drainTimeout bounds a park's wait for the calls on the connection.
const drainTimeout = 30 * time.Second

func (mach machine) spec(id, dir string) vmm.Spec {
	return vmm.Spec{ID: id, Dir: dir, Kernel: mach.Kernel, Initrd: mach.Initrd, Disk: mach.Disk,
		MemoryMiB: mach.MemoryMiB, CPUs: mach.CPUs}
}

func allocated(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// manifest describes the snapshot files of a session dir.
func manifest(dir string, took time.Duration) (*parked, error) {
	p := &parked{State: filepath.Join(dir, stateFile), Mem: filepath.Join(dir, vmm.MemFile),
		CreatedAt: time.Now().UTC(), ParkMillis: took.Milliseconds()}
	sum, err := fileSHA256(p.State)
	if err != nil {
		return nil, err
	}
	p.StateSHA256 = sum
	sfi, err := os.Stat(p.State)
	if err != nil {
		return nil, err
	}
	mfi, err := os.Stat(p.Mem)
	if err != nil {
		return nil, err
	}
	p.StateBytes, p.MemSize = sfi.Size(), mfi.Size()
	if p.MemSum, err = memChecksum(p.Mem); err != nil {
		return nil, fmt.Errorf("memory file checksum: %w", err)
	}
	p.DiskBytes = allocated(p.State) + allocated(p.Mem)
	return p, nil
}

// verify checks a snapshot's files against its manifest.
func (p *parked) verify() error {
	sfi, err := os.Stat(p.State)
	if err != nil {
		return fmt.Errorf("snapshot state file: %w", err)
	}
	if sfi.Size() != p.StateBytes {
		return fmt.Errorf("snapshot state file is %d bytes, manifest says %d", sfi.Size(), p.StateBytes)
	}
	sum, err := fileSHA256(p.State)
	if err != nil {
		return fmt.Errorf("snapshot state file: %w", err)
	}
	if sum != p.StateSHA256 {
		return errors.New("snapshot state file is corrupt (checksum mismatch)")
	}
	mfi, err := os.Stat(p.Mem)
	if err != nil {
		return fmt.Errorf("snapshot memory file: %w", err)
	}
	if p.MemFormat != memQcow2 && mfi.Size() != p.MemSize {
		return fmt.Errorf("snapshot memory file is %d bytes, manifest says %d", mfi.Size(), p.MemSize)
	}
	return nil
}

// verifyMem checks the RAM file's content against the manifest's
// checksum (slower than verify: it reads the pages the guest touched).
func (p *parked) verifyMem() error {
	if p.MemSum == "" {
		return nil
	}
	sum, err := memChecksum(p.Mem)
	if err != nil {
		return fmt.Errorf("snapshot memory file: %w", err)
	}
	if sum != p.MemSum {
		return errors.New("snapshot memory file is corrupt (checksum mismatch)")
	}
	return nil
}

// Park saves the session's whole VM to disk and ends its QEMU process.
func (m *Manager) Park(ctx context.Context, id string) (api.Session, error) {
	return m.park(ctx, id, CauseAPI)
}

// park is Park for cause (see Event).
func (m *Manager) park(ctx context.Context, id string, cause Cause) (_ api.Session, err error) {
	if err := m.frozenErr(id); err != nil {
		return api.Session{}, err
	}
	rec, unlock, done, err := m.begin(ctx, "park", id, api.StateRunning, api.StateParked)
	if err != nil || done {
		return m.toAPI(rec), err
	}
	defer unlock()
	ev, err := m.beginEvent(ctx, Event{Kind: EventPark, Cause: cause, Session: id})
	if err != nil {
		return api.Session{}, err
	}
	defer func(start time.Time) { m.doneEvent(ctx, ev, start, err) }(time.Now())
	m.mu.Lock()
	l := m.live[id]
	if l != nil {
		l.deleting = true
	}
	m.mu.Unlock()
	if l == nil {
		return api.Session{}, api.Errorf(api.CodeConflict, "park %s: no running VM", id)
	}
	// The parked record must name the disk the guest writes.
	if err := m.settleLive(ctx, &rec, l); err != nil {
		m.undelete(l)
		return api.Session{}, err
	}
	start := time.Now()
	rec.State, rec.UpdatedAt = api.StateParking, time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
		m.undelete(l)
		return api.Session{}, fmt.Errorf("session: park %s: %w", id, err)
	}
	// Tokens the guest holds are about to go to disk with its memory:
	// they die now (see token.go). None of the new generation is minted
	// while the record says parking.
	if _, err := m.cfg.Store.BumpTokenGen(ctx, id); err != nil {
		m.rollBackPark(ctx, l, rec)
		return api.Session{}, fmt.Errorf("session: park %s: revoke its tokens: %w", id, err)
	}
	m.crashPoint("park.recorded")
	// Calls already on the connection finish first (new ones wait for
	// the park, then wake the session); a transfer that outlasts
	// drainTimeout is cut.
	for deadline := time.Now().Add(drainTimeout); l.calls.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
	}
	os.Remove(filepath.Join(m.dir(id), wokenFile)) // left by a wake cut short after its record
	if err := l.hangUp(ctx, m.answerTimeout(), m.cfg.Log.With("session", id)); err != nil {
		// Nothing was done to the VM: it runs on, as does the session.
		l.touch() // idle parking tries again only after another idle period
		m.rollBackPark(ctx, l, rec)
		m.cfg.Log.Warn("park rolled back: the guest agent did not answer", "session", id, "err", err)
		return api.Session{}, api.Errorf(api.CodeTimeout, "park %s: the guest agent did not answer within %s (%v); the session keeps running", id, m.answerTimeout(), err)
	}
	m.crashPoint("park.detached")
	// The park must finish once started, even if the client goes away;
	// a VMM that stops answering (frozen) fails it after parkTimeout.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), parkTimeout)
	defer cancel()
	if _, err := m.snap.Save(pctx, l.vm, filepath.Join(m.dir(id), stateFile)); err != nil {
		// The VM still runs: reconnect and carry on as running.
		m.cfg.Log.Warn("park failed; session keeps running", "session", id, "err", err)
		l.client().Close() // the channel takes one connection at a time
		if vmGone(l.vm) {
			m.fail(id, "park failed and the VM is gone: "+err.Error())
			return api.Session{}, fmt.Errorf("session: park %s: %w", id, err)
		}
		// A guest that does not answer yet is left to the session's
		// watcher, which connects to it in the background.
		if agent, cerr := m.connect(pctx, l.vm); cerr == nil {
			l.setClient(agent)
			go m.serveGuest(id, l)
		} else {
			m.cfg.Log.Warn("guest agent not answering after a failed park; connecting in the background", "session", id, "err", cerr)
		}
		m.rollBackPark(ctx, l, rec)
		return api.Session{}, fmt.Errorf("session: park %s: %w", id, err)
	}
	m.crashPoint("park.saved")
	p, err := manifest(m.dir(id), time.Since(start))
	if err != nil {
		m.fail(id, "park: snapshot incomplete: "+err.Error())
		return api.Session{}, fmt.Errorf("session: park %s: %w", id, err)
	}
	m.mu.Lock()
	if m.live[id] == l {
		delete(m.live, id)
	}
	m.mu.Unlock()
	mach := l.mach
	mach.Parked = p
	rec.State, rec.Handle, rec.Snapshot, rec.UpdatedAt = api.StateParked, nil, mach.encode(), time.Now().UTC()
	rec.StoredManifest, rec.StoredBytes = "", 0 // until this snapshot's upload is durable
	if err := m.cfg.Store.UpdateSession(pctx, &rec); err != nil {
		m.recordFollows(rec)
		return api.Session{}, fmt.Errorf("session: park %s: the session is parked, but its record is not written yet (tried again until the store takes it): %w", id, err)
	}
	m.crashPoint("park.done")
	m.cfg.Log.Info("session parked", "session", id, "park_ms", p.ParkMillis, "disk_bytes", p.DiskBytes)
	m.startUpload(rec, CausePark)
	return m.toAPI(rec), nil
}

// rollBackPark records a park that left the VM running (nothing was
// saved) as running again, and lets the session's calls and watcher have
// its VM back.
func (m *Manager) rollBackPark(ctx context.Context, l *live, rec store.Session) {
	m.undelete(l)
	rec.State, rec.UpdatedAt = api.StateRunning, time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(context.WithoutCancel(ctx), &rec); err != nil {
		m.cfg.Log.Error("record rolled-back park", "session", rec.ID, "err", err)
		m.recordFollows(rec)
	}
}

// begin starts a park or wake (op) of session id: it takes the session's
// lock and reads its record. A session already in state already needs
// nothing (done, lock released); one in neither want nor already is a
// conflict. On success the caller holds the lock until it calls unlock.
func (m *Manager) begin(ctx context.Context, op, id, want, already string) (rec store.Session, unlock func(), done bool, err error) {
	if m.snap == nil {
		return rec, nil, false, api.Errorf(api.CodeUnavailable, "%s: the VMM driver cannot snapshot", op)
	}
	unlock = m.lock(id)
	rec, err = m.cfg.Store.GetSession(ctx, id)
	switch {
	case err != nil:
		err = notFound(id, err)
	case rec.State == already:
		done = true
	case rec.State != want:
		err = api.Errorf(api.CodeConflict, "%s %s: session is %s", op, id, rec.State)
	default:
		return rec, unlock, false, nil
	}
	unlock()
	return rec, nil, done, err
}

func (m *Manager) undelete(l *live) {
	m.mu.Lock()
	l.deleting = false
	m.mu.Unlock()
}

// Wake restores a parked session in a fresh QEMU process.
func (m *Manager) Wake(ctx context.Context, id string) (api.Session, error) {
	return m.wake(ctx, id, CauseAPI, "")
}

// wake is Wake for cause (see Event); trigger names the event that woke
// it, if one did.
func (m *Manager) wake(ctx context.Context, id string, cause Cause, trigger string) (_ api.Session, err error) {
	rec, unlock, done, err := m.begin(ctx, "wake", id, api.StateParked, api.StateRunning)
	if err != nil || done {
		return m.toAPI(rec), err
	}
	defer unlock()
	if err := m.takesVMs("wake " + id); err != nil {
		return api.Session{}, err
	}
	ev, err := m.beginEvent(ctx, Event{Kind: EventWake, Cause: cause, Session: id, Trigger: trigger})
	if err != nil {
		return api.Session{}, err
	}
	defer func(start time.Time) { m.doneEvent(ctx, ev, start, err) }(time.Now())
	// A session of a dead node wakes here from its stored snapshot.
	from := rec.Node
	if err := m.wakeHere(ctx, &rec); err != nil {
		return api.Session{}, err
	}
	moved := rec.Node != from
	// The woken guest writes its RAM file: an upload of it ends first.
	m.stopUpload(id)
	if err := m.fetchSnapshot(ctx, rec); err != nil {
		return api.Session{}, err
	}
	mach, err := parkedMachine(rec.Snapshot)
	if err != nil {
		msg := "wake: " + err.Error()
		m.fail(id, msg)
		return api.Session{}, api.Errorf(api.CodeUnavailable, "session %s: %s; the session is marked failed", id, msg)
	}
	if err := m.bootFilesHere(ctx, id, mach); err != nil {
		return api.Session{}, err
	}
	release, err := m.admit("wake", mach.MemoryMiB, mach.CPUs)
	if err != nil {
		return api.Session{}, err
	}
	defer release()
	rec.State, rec.UpdatedAt = api.StateWaking, time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
		if moved && errors.Is(err, store.ErrConflict) {
			m.dropMoved(ctx, id)
		}
		return api.Session{}, fmt.Errorf("session: wake %s: %w", id, err)
	}
	m.crashPoint("wake.recorded")
	// Once the RAM file is mapped by a running guest the snapshot is
	// consumed: finish even if the client goes away.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.DefaultBootTimeout)
	defer cancel()
	dir := m.dir(id)
	w := m.wakeSteps(rec, dir)
	// The RAM file's content is checked while the VMM starts: the guest
	// runs only once it passed.
	go func() {
		w.memErr = mach.Parked.verifyMem()
		close(w.memChecked)
	}()
	l, err := m.restore(wctx, id, dir, mach, mach.Parked.State, hooks{started: w.started, beforeRun: w.beforeRun, keepLate: true})
	late := errors.Is(err, errAgentLate)
	if late {
		// The guest runs from its consumed snapshot but is slow to
		// answer (a host under load): it is the session now. It is
		// recorded running and its watcher connects to it in the
		// background; the caller is told.
		m.cfg.Log.Warn("woken guest's agent late; the session runs and is connected in the background", "session", id, "err", err)
		wctx = context.WithoutCancel(wctx)
	} else if err != nil {
		if w.ran.Load() && errors.Is(err, vmm.ErrNotRun) {
			// Told before it ran that the VMM was gone: the snapshot
			// is intact after all.
			if rerr := os.Rename(filepath.Join(dir, wokenFile), filepath.Join(dir, stateFile)); rerr == nil {
				w.ran.Store(false)
			}
		}
		if w.ran.Load() {
			msg := "wake failed after the guest ran: " + err.Error()
			m.fail(id, msg)
			return api.Session{}, api.Errorf(api.CodeUnavailable, "session %s: %s; the session is marked failed", id, msg)
		}
		<-w.memChecked
		if w.memErr != nil {
			msg := "wake: " + w.memErr.Error()
			w.settle()
			m.killStray(context.Background(), id)
			m.fail(id, msg)
			return api.Session{}, api.Errorf(api.CodeUnavailable, "session %s: %s; the session is marked failed", id, msg)
		}
		// The guest never ran: the snapshot is as good as before.
		w.settle()
		return api.Session{}, m.backToParked(id, err)
	}
	m.crashPoint("wake.connected")
	rec.Gen = w.gen(rec.Gen)
	keepStored(rec, mach, &mach)
	mach.Parked, mach.FromHome = nil, "" // its disk rests on this node's files (fetchSnapshot)
	if mach.Restore != nil {
		// Told once the guest is served (serveGuest); a server stop
		// before then leaves the guest's tool to its own devices.
		l.setRestore(mach.Restore)
		mach.Restore = nil
	}
	l.mach, l.env = mach, rec.Env
	rec.State, rec.Handle, rec.Snapshot, rec.Error, rec.UpdatedAt = api.StateRunning, l.vm.Handle(), mach.encode(), "", time.Now().UTC()
	rec.StoredManifest, rec.StoredBytes = "", 0 // the snapshot is consumed; the next park uploads again
	if err := m.cfg.Store.UpdateSession(wctx, &rec); err != nil {
		// The guest runs and its snapshot is consumed: keep it running
		// (a restart re-adopts it from the handle recorded before it
		// ran), say the record lags, and write it once the store is
		// back.
		m.adoptLive(id, l)
		m.recordFollows(rec)
		return api.Session{}, fmt.Errorf("session: wake %s: the session runs, but its record is not written yet (tried again until the store takes it): %w", id, err)
	}
	os.Remove(filepath.Join(dir, wokenFile))
	m.adoptLive(id, l)
	if late {
		return api.Session{}, api.Errorf(api.CodeUnavailable, "session %s: woke, but %v; the session runs and its agent is being connected", id, err)
	}
	return m.toAPI(rec), nil
}

// wake is one wake's steps around the restore: the restored VMM's handle
// is recorded while it loads (started), and waited for before the guest
// runs (beforeRun), which renames the state file to wokenFile: a crash
// from then on finds the VMM by that handle, and one before finds the
// snapshot unchanged.
type wake struct {
	m         *Manager
	rec       store.Session
	dir       string
	writing   atomic.Bool   // started began the handle's record
	recorded  chan struct{} // closed once that record is written
	recordErr error         // set before recorded is closed
	ran       atomic.Bool   // the guest was let run

	memChecked chan struct{} // closed once the RAM file is checked
	memErr     error         // set before memChecked is closed
}

// settle waits for the handle's record begun by started, if any: a failed
// wake records its outcome only after it.
func (w *wake) settle() {
	if w.writing.Load() {
		<-w.recorded
	}
}

func (m *Manager) wakeSteps(rec store.Session, dir string) *wake {
	return &wake{m: m, rec: rec, dir: dir, recorded: make(chan struct{}), memChecked: make(chan struct{})}
}

// started records the handle in the background: the state loads
// meanwhile.
func (w *wake) started(ctx context.Context, handle []byte) error {
	w.rec.Handle, w.rec.UpdatedAt = handle, time.Now().UTC()
	w.writing.Store(true)
	go func() {
		// w.rec's generation moves on with the write; the wake's last
		// write starts from it (see gen).
		w.recordErr = w.m.cfg.Store.UpdateSession(ctx, &w.rec)
		close(w.recorded)
	}()
	return nil
}

// gen is the generation of the session's record after the wake's own
// writes so far: the handle's, once settled.
func (w *wake) gen(read int64) int64 {
	w.settle()
	if w.writing.Load() && w.recordErr == nil {
		return w.rec.Gen
	}
	return read
}

func (w *wake) beforeRun(ctx context.Context) error {
	select {
	case <-w.memChecked:
		if w.memErr != nil {
			return w.memErr
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	if !w.writing.Load() {
		return errors.New("the restored VM was never recorded")
	}
	select {
	case <-w.recorded:
		if w.recordErr != nil {
			return fmt.Errorf("record the restored VM: %w", w.recordErr)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	w.m.crashPoint("wake.handle-recorded")
	if err := os.Rename(filepath.Join(w.dir, stateFile), filepath.Join(w.dir, wokenFile)); err != nil {
		return fmt.Errorf("mark the snapshot consumed: %w", err)
	}
	w.ran.Store(true)
	return nil
}

// backToParked records a session whose wake failed before its guest ran
// as parked again (its snapshot is unchanged) and returns the wake's
// error for the caller.
func (m *Manager) backToParked(id string, cause error) error {
	ctx := context.Background()
	m.killStray(ctx, id)
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if err != nil {
		return fmt.Errorf("session: wake %s: %w (and reading its record: %v)", id, cause, err)
	}
	if _, verr := parkedMachine(rec.Snapshot); verr != nil {
		msg := "wake failed: " + cause.Error() + "; snapshot unusable: " + verr.Error()
		m.fail(id, msg)
		return api.Errorf(api.CodeUnavailable, "session %s: %s; the session is marked failed", id, msg)
	}
	rec.State, rec.Handle, rec.Error, rec.UpdatedAt = api.StateParked, nil, "wake failed: "+cause.Error(), time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
		m.recordFollows(rec)
		return fmt.Errorf("session: wake %s: %w (and recording it parked, tried again until the store takes it: %w)", id, cause, err)
	}
	m.cfg.Log.Warn("wake failed before the guest ran; the session stays parked", "session", id, "err", cause)
	return api.Errorf(api.CodeUnavailable, "session %s: wake failed: %v; the session stays parked, its snapshot intact", id, cause)
}

// hooks are a restore's steps (see vmm.Spec); nil ones are skipped.
type hooks struct {
	started    func(context.Context, []byte) error
	beforeLoad func(context.Context) error
	beforeRun  func(context.Context) error
	// keepLate keeps a restored VM that runs but whose agent did not
	// answer in time: restore returns it with a Disconnected client and
	// an error wrapping errAgentLate.
	keepLate bool
}

// errAgentLate says that a restored guest runs but its agent has not
// answered yet.
var errAgentLate = errors.New("the guest agent has not answered yet")

// restore starts a VM from a state file and connects to its agent, with
// the hooks h run at their steps.
func (m *Manager) restore(ctx context.Context, id, dir string, mach machine, state string, h hooks) (*live, error) {
	start := time.Now()
	spec := mach.spec(id, dir)
	spec.Started, spec.BeforeLoad, spec.BeforeRun = h.started, h.beforeLoad, h.beforeRun
	vm, st, err := m.snap.Restore(ctx, spec, state)
	if err != nil {
		return nil, err
	}
	restored := time.Now()
	agent, err := m.connect(ctx, vm)
	m.cfg.Log.Info("restored", "session", id, "spare", st.Spare, "spawn_ms", st.Spawn.Milliseconds(), "load_ms", st.Load.Milliseconds(),
		"qemu_ms", restored.Sub(start).Milliseconds(), "agent_ms", time.Since(restored).Milliseconds())
	if err != nil {
		tail := lastLines(vm.ConsoleTail(), 8)
		m.cfg.Log.Warn("woken guest's agent did not answer", "session", id, "err", err, "vmm", vm.Diagnose(ctx))
		if h.keepLate && !vmGone(vm) {
			mach.Parked = nil
			return &live{vm: vm, agent: agentproto.Disconnected(), mach: mach},
				fmt.Errorf("%w after restore (%v); console: %s", errAgentLate, err, tail)
		}
		_ = vm.Stop(context.Background())
		return nil, fmt.Errorf("agent did not answer after restore: %v; console: %s", err, tail)
	}
	mach.Parked = nil
	return &live{vm: vm, agent: agent, mach: mach}, nil
}

// recoverParking settles a session whose park was cut by a server stop:
// a complete snapshot makes it parked; a VM still there runs on (a save
// under way is cancelled, a guest paused by it continued) and the session
// is running again; anything else fails it.
func (m *Manager) recoverParking(ctx context.Context, rec store.Session) {
	if m.recoverRollback(ctx, rec) {
		return
	}
	dir := m.dir(rec.ID)
	os.Remove(filepath.Join(dir, stateFile+".tmp"))
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err == nil {
		// The state file is renamed into place only after it and the RAM
		// file are synced: the snapshot is complete. A VM left paused
		// after the migration must not run on.
		m.killLeftover(ctx, rec)
		m.killStray(ctx, rec.ID)
		mach, err := decodeMachine(rec.Snapshot)
		if err == nil {
			mach.Parked, err = manifest(dir, 0)
		}
		if err != nil {
			m.fail(rec.ID, "server stopped while parking; snapshot unusable: "+err.Error())
			return
		}
		rec.State, rec.Handle, rec.Snapshot, rec.UpdatedAt = api.StateParked, nil, mach.encode(), time.Now().UTC()
		rec.StoredManifest, rec.StoredBytes = "", 0 // Recover uploads it (uploadParked)
		if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
			m.cfg.Log.Error("record recovered park", "session", rec.ID, "err", err)
		}
		m.cfg.Log.Info("park cut short by a server stop: its snapshot was complete; session parked", "session", rec.ID)
		return
	}
	// No snapshot: the VM is the session. The save may have paused it (or
	// still be migrating): resume it before its agent can answer.
	if err := m.readopt(ctx, rec, true); err != nil {
		m.killStray(ctx, rec.ID)
		m.fail(rec.ID, "server stopped while parking, before the snapshot was complete, and the VM is gone: "+err.Error())
		return
	}
	m.cfg.Log.Info("park cut short by a server stop: the VM runs on; session running", "session", rec.ID)
}

// recoverWaking settles a session whose wake was cut by a server stop.
// While the state file is in place the guest never ran (see wokenFile):
// any VMM started for it is stopped and the session is parked again, its
// snapshot intact. Once it was renamed, the guest ran from the snapshot,
// which is consumed: the VMM recorded before that (see wake.started) is
// re-adopted and continued, or the session fails.
func (m *Manager) recoverWaking(ctx context.Context, rec store.Session) {
	dir := m.dir(rec.ID)
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err == nil {
		m.killLeftover(ctx, rec)
		m.killStray(ctx, rec.ID)
		if _, err := parkedMachine(rec.Snapshot); err != nil {
			m.fail(rec.ID, "server stopped while the session was waking; snapshot unusable: "+err.Error())
			return
		}
		rec.State, rec.Handle, rec.UpdatedAt = api.StateParked, nil, time.Now().UTC()
		if err := m.cfg.Store.UpdateSession(ctx, &rec); err != nil {
			m.cfg.Log.Error("record recovered wake", "session", rec.ID, "err", err)
		}
		m.cfg.Log.Info("wake cut short by a server stop before the guest ran; session parked, snapshot intact", "session", rec.ID)
		return
	}
	if err := m.readopt(ctx, rec, true); err != nil {
		m.killStray(ctx, rec.ID)
		m.fail(rec.ID, "server stopped while the session was waking, after its guest ran from the snapshot (consumed), and the VM is gone: "+err.Error())
		return
	}
	os.Remove(filepath.Join(dir, wokenFile))
	m.cfg.Log.Info("wake cut short by a server stop after the guest ran: re-adopted; session running", "session", rec.ID)
}

// parkIdle parks the sessions this server runs that are idle past their
// timeout. It looks at the VMs it holds, not at every record: a tick
// costs in proportion to the running sessions here, and reads the store
// only for a session's timeout, once, and for one found idle.
func (m *Manager) parkIdle(ctx context.Context) {
	m.mu.Lock()
	type cand struct {
		id string
		l  *live
	}
	cands := make([]cand, 0, len(m.live))
	for id, l := range m.live {
		if !l.deleting && l.inflight.Load() == 0 {
			cands = append(cands, cand{id, l})
		}
	}
	m.mu.Unlock()
	for _, c := range cands {
		idle := time.Duration(c.l.idle.Load())
		if idle == 0 {
			rec, err := m.cfg.Store.GetSession(ctx, c.id)
			if err != nil {
				continue
			}
			idle = max(m.idleTimeout(rec), -1)
			if idle == 0 {
				idle = -1
			}
			c.l.idle.Store(int64(idle))
		}
		if idle < 0 || c.l.inflight.Load() > 0 || time.Since(time.Unix(0, c.l.lastActive.Load())) < idle {
			continue
		}
		if rec, err := m.cfg.Store.GetSession(ctx, c.id); err != nil || rec.State != api.StateRunning {
			continue
		}
		m.idlePark(ctx, c.id, idle)
	}
}

// idlePark parks an idle session under the claim park/ID (see claim.go):
// of servers that both hold its VM (until issue 19, each that re-adopted
// it), one parks it.
func (m *Manager) idlePark(ctx context.Context, id string, idle time.Duration) {
	ctx, release, ok := m.lease(ctx, "park/"+id)
	if !ok {
		return
	}
	defer release()
	m.cfg.Log.Info("parking idle session", "session", id, "idle_timeout", idle)
	if _, err := m.park(ctx, id, CauseIdle); err != nil {
		m.cfg.Log.Warn("idle park failed", "session", id, "err", err)
	}
}

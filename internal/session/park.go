package session

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm"
	"github.com/cove-dev/cove/internal/vmm/qemu"
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
}

// parked is the manifest of a parked session's snapshot.
type parked struct {
	State       string    `json:"state"` // path of the device state file
	StateSHA256 string    `json:"state_sha256"`
	StateBytes  int64     `json:"state_bytes"`
	Mem         string    `json:"mem"` // path of the RAM file
	MemSize     int64     `json:"mem_size"`
	DiskBytes   int64     `json:"disk_bytes"` // allocated: RAM file + state
	CreatedAt   time.Time `json:"created_at"`
	ParkMillis  int64     `json:"park_ms"`
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
// qemu.Driver.Restore), and the woken guest notices no hang-up or new
// connection, only the next sync on the port it reads — the least guest
// code on the wake path. If the guest does not agree in time, the
// connection is closed: the guest sees it end before the save.
func (l *live) hangUp(ctx context.Context) {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	err := l.agent.Detach(dctx)
	cancel()
	if err != nil {
		l.agent.Close()
	}
}

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
	p := &parked{State: filepath.Join(dir, stateFile), Mem: filepath.Join(dir, qemu.MemFile),
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
	if mfi.Size() != p.MemSize {
		return fmt.Errorf("snapshot memory file is %d bytes, manifest says %d", mfi.Size(), p.MemSize)
	}
	return nil
}

// Park saves the session's whole VM to disk and ends its QEMU process.
func (m *Manager) Park(ctx context.Context, id string) (api.Session, error) {
	rec, unlock, done, err := m.begin(ctx, "park", id, api.StateRunning, api.StateParked)
	if err != nil || done {
		return m.toAPI(rec), err
	}
	defer unlock()
	m.mu.Lock()
	l := m.live[id]
	if l != nil {
		l.deleting = true
	}
	m.mu.Unlock()
	if l == nil {
		return api.Session{}, api.Errorf(api.CodeConflict, "park %s: no running VM", id)
	}
	start := time.Now()
	rec.State, rec.UpdatedAt = api.StateParking, time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(ctx, rec); err != nil {
		m.undelete(l)
		return api.Session{}, fmt.Errorf("session: park %s: %w", id, err)
	}
	l.hangUp(ctx)
	// The park must finish once started, even if the client goes away.
	pctx := context.WithoutCancel(ctx)
	if _, err := m.snap.Save(pctx, l.vm, filepath.Join(m.dir(id), stateFile)); err != nil {
		// The VM still runs: reconnect and carry on as running.
		m.cfg.Log.Warn("park failed; session keeps running", "session", id, "err", err)
		l.agent.Close() // the channel takes one connection at a time
		if agent, cerr := m.connect(pctx, l.vm); cerr == nil {
			l.agent = agent
			m.undelete(l)
			rec.State, rec.UpdatedAt = api.StateRunning, time.Now().UTC()
			_ = m.cfg.Store.UpdateSession(pctx, rec)
			return api.Session{}, fmt.Errorf("session: park %s: %w", id, err)
		}
		_ = l.vm.Stop(pctx)
		m.fail(id, "park failed and the VM did not answer afterwards: "+err.Error())
		return api.Session{}, fmt.Errorf("session: park %s: %w", id, err)
	}
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
	if err := m.cfg.Store.UpdateSession(pctx, rec); err != nil {
		return api.Session{}, fmt.Errorf("session: park %s: record: %w", id, err)
	}
	m.cfg.Log.Info("session parked", "session", id, "park_ms", p.ParkMillis, "disk_bytes", p.DiskBytes)
	return m.toAPI(rec), nil
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
	rec, unlock, done, err := m.begin(ctx, "wake", id, api.StateParked, api.StateRunning)
	if err != nil || done {
		return m.toAPI(rec), err
	}
	defer unlock()
	mach, err := parkedMachine(rec.Snapshot)
	if err != nil {
		msg := "wake: " + err.Error()
		m.fail(id, msg)
		return api.Session{}, api.Errorf(api.CodeUnavailable, "session %s: %s; the session is marked failed", id, msg)
	}
	rec.State, rec.UpdatedAt = api.StateWaking, time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(ctx, rec); err != nil {
		return api.Session{}, fmt.Errorf("session: wake %s: %w", id, err)
	}
	// Once the RAM file is mapped by a running guest the snapshot is
	// consumed: finish even if the client goes away.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.DefaultBootTimeout)
	defer cancel()
	l, err := m.restore(wctx, id, m.dir(id), mach, mach.Parked.State, nil)
	if err != nil {
		msg := "wake failed: " + err.Error()
		m.fail(id, msg)
		return api.Session{}, api.Errorf(api.CodeUnavailable, "session %s: %s; the session is marked failed", id, msg)
	}
	os.Remove(mach.Parked.State)
	mach.Parked = nil
	l.mach = mach
	rec.State, rec.Handle, rec.Snapshot, rec.Error, rec.UpdatedAt = api.StateRunning, l.vm.Handle(), mach.encode(), "", time.Now().UTC()
	if err := m.cfg.Store.UpdateSession(wctx, rec); err != nil {
		_ = l.vm.Stop(wctx)
		return api.Session{}, fmt.Errorf("session: wake %s: record: %w", id, err)
	}
	m.adoptLive(id, l)
	return m.toAPI(rec), nil
}

// restore starts a VM from a state file and connects to its agent.
// beforeLoad, if set, runs once QEMU runs and before it loads the state
// (see vmm.Spec.BeforeLoad).
func (m *Manager) restore(ctx context.Context, id, dir string, mach machine, state string, beforeLoad func(context.Context) error) (*live, error) {
	start := time.Now()
	spec := mach.spec(id, dir)
	spec.BeforeLoad = beforeLoad
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
		_ = vm.Stop(context.Background())
		return nil, fmt.Errorf("agent did not answer after restore: %v; console: %s", err, tail)
	}
	mach.Parked = nil
	return &live{vm: vm, agent: agent, mach: mach}, nil
}

// recoverParking settles a session whose park was cut by a server stop:
// a complete snapshot makes it parked; a VM still running makes it running
// again; anything else fails it.
func (m *Manager) recoverParking(ctx context.Context, rec store.Session) {
	dir := m.dir(rec.ID)
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err == nil {
		// The state file is renamed into place only after the RAM file is
		// synced: the snapshot is complete. A VM left paused after the
		// migration must not run on.
		m.killLeftover(ctx, rec)
		mach, err := decodeMachine(rec.Snapshot)
		if err == nil {
			mach.Parked, err = manifest(dir, 0)
		}
		if err != nil {
			m.fail(rec.ID, "server stopped while parking; snapshot unusable: "+err.Error())
			return
		}
		rec.State, rec.Handle, rec.Snapshot, rec.UpdatedAt = api.StateParked, nil, mach.encode(), time.Now().UTC()
		if err := m.cfg.Store.UpdateSession(ctx, rec); err != nil {
			m.cfg.Log.Error("record recovered park", "session", rec.ID, "err", err)
		}
		return
	}
	if err := m.readopt(ctx, rec); err != nil {
		m.fail(rec.ID, "server stopped while parking and the VM is gone: "+err.Error())
		return
	}
	// The save may have paused the guest before the server stopped.
	m.mu.Lock()
	l := m.live[rec.ID]
	m.mu.Unlock()
	if l != nil {
		if r, ok := l.vm.(interface{ Resume(context.Context) error }); ok {
			_ = r.Resume(ctx)
		}
	}
}

// idleLoop parks sessions idle past their timeout: no API call for that
// long and nothing in flight (an exec, an attached PTY, a transfer).
func (m *Manager) idleLoop() {
	defer m.bg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		if m.snap == nil {
			continue
		}
		ctx := context.Background()
		recs, err := m.cfg.Store.ListSessions(ctx)
		if err != nil {
			continue
		}
		for _, rec := range recs {
			if rec.State != api.StateRunning {
				continue
			}
			idle := m.idleTimeout(rec)
			if idle <= 0 {
				continue
			}
			m.mu.Lock()
			l := m.live[rec.ID]
			m.mu.Unlock()
			if l == nil || l.inflight.Load() > 0 || time.Since(time.Unix(0, l.lastActive.Load())) < idle {
				continue
			}
			m.cfg.Log.Info("parking idle session", "session", rec.ID, "idle_timeout", idle)
			if _, err := m.Park(ctx, rec.ID); err != nil {
				m.cfg.Log.Warn("idle park failed", "session", rec.ID, "err", err)
			}
		}
	}
}

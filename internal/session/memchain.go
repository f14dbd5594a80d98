package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/vmm"
)

// RAM shared between checkpoints.
//
// The pause takes a plain copy of the RAM file (checkpoint.go): on a file
// system without reflinks, the data extents of the whole touched RAM. Once
// the guest runs again and the checkpoint is recorded, a background step
// (encodeMem) re-encodes that copy as a qcow2 file, mem.qcow2, holding
// only the clusters in which it differs from its base: the RAM of the
// checkpoint the session's RAM last was (machine.MemFrom: taken, or rolled
// back to), else of its latest earlier checkpoint, kept so (relative name
// ../NAME/mem.qcow2), else the session's template version's RAM file (raw;
// the version stays while the session names it), else nothing. So a
// checkpoint after a small change adds about the pages that changed.
//
// The encoding is written as mem.qcow2.tmp, synced, renamed to mem.qcow2,
// and only then recorded (the checkpoint's manifest names it, MemFormat
// "qcow2"); the raw copy goes last. A server that dies on the way leaves
// the manifest naming a complete file; recoverMemFiles removes the file
// the manifest does not name and queues the encoding again.
//
// A rollback, a fork and a template from a checkpoint read it back as a
// raw sparse file (vmm.Disks.Raw), checked against the checksum taken of
// the RAM at the checkpoint (copyMem): what runs is exactly that RAM.
//
// A checkpoint whose RAM others rest on is removed only after each of them
// was rebased onto its base (rebaseMemChildren): a copy of the child is
// rebased, synced and renamed over it, so that at every instant each
// recorded checkpoint reads the same. The chain's files are the session's
// (and its template version's) alone: a fork materializes its RAM, so it
// rests on nothing of its parent's.

// Names, in a checkpoint's dir, of its RAM re-encoded, of that file being
// written, and of it being rebased (before a removal of its base).
const (
	memDiffFile  = "mem.qcow2"
	memEncodeTmp = "mem.qcow2.enc"
	memDiffTmp   = "mem.qcow2.tmp"
)

// memQcow2 is parked.MemFormat of a RAM file kept as a qcow2 file.
const memQcow2 = "qcow2"

// copyMem writes dst (created), a raw sparse copy of the RAM that the
// snapshot p holds, synced. A re-encoded RAM is checked against p's
// checksum: a chain that reads other than the checkpoint's RAM is refused.
func (m *Manager) copyMem(ctx context.Context, p *parked, dst string) error {
	if p.MemFormat != memQcow2 {
		copyRest, err := startCopy(p.Mem, dst)
		if err == nil {
			err = copyRest(true)
		}
		return err
	}
	if err := m.disks.Raw(ctx, p.Mem, memQcow2, dst); err != nil {
		return err
	}
	if p.MemSum == "" {
		return nil
	}
	sum, err := memChecksum(dst)
	if err == nil && sum != p.MemSum {
		err = errors.New("the checkpoint's memory reads back other than it was taken (checksum mismatch)")
	}
	if err != nil {
		os.Remove(dst)
		return err
	}
	return nil
}

// ckptRef names a checkpoint.
type ckptRef struct{ session, name string }

// encodeLater queues the re-encoding of session id's checkpoint name;
// one worker runs the queue in order, so that a checkpoint's base is
// encoded before it.
func (m *Manager) encodeLater(id, name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.stop:
		return // the next server queues it (recoverMemFiles)
	default:
	}
	m.encodeQ = append(m.encodeQ, ckptRef{id, name})
	if m.encoding {
		return
	}
	m.encoding = true
	m.encodeWG.Add(1)
	go m.encodeLoop()
}

// encodeStopWait bounds how long a stopping manager waits for a
// re-encoding, cancelled, to end: one cut short is redone at the next
// start, so nothing waits on a stuck one.
const encodeStopWait = 2 * time.Second

// stopEncodes cancels the re-encoding under way (m.stop is closed) and
// waits for it, at most encodeStopWait.
func (m *Manager) stopEncodes() {
	done := make(chan struct{})
	go func() { m.encodeWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(encodeStopWait):
		m.cfg.Log.Warn("a checkpoint's memory re-encoding did not end in time; it is redone at the next start")
	}
}

func (m *Manager) encodeLoop() {
	defer m.encodeWG.Done()
	ctx, cancel := m.untilStop()
	defer cancel()
	for {
		m.mu.Lock()
		stopped := false
		select {
		case <-m.stop:
			stopped = true
		default:
		}
		if stopped || len(m.encodeQ) == 0 {
			m.encodeQ, m.encoding = nil, false
			m.mu.Unlock()
			return
		}
		c := m.encodeQ[0]
		m.encodeQ = m.encodeQ[1:]
		m.mu.Unlock()
		if err := m.encodeMem(ctx, c.session, c.name); err != nil {
			m.cfg.Log.Warn("checkpoint memory not re-encoded; it keeps its full copy", "session", c.session, "checkpoint", c.name, "err", err)
		}
	}
}

// encodeMem re-encodes the raw RAM copy of session id's checkpoint name
// onto its base (see above). The base is chosen, and the result recorded,
// under the session's lock; the encoding itself runs without it, so that
// a rollback, checkpoint or park of the session does not wait for it:
// what it reads stays meanwhile or is replaced by files that read the
// same (rebaseMemChildren), and a base removed meanwhile is found at the
// record, which then queues the encoding again. A checkpoint gone
// meanwhile, or encoded already, is left.
func (m *Manager) encodeMem(ctx context.Context, id, name string) error {
	ctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
	defer cancel()
	unlock := m.lock(id)
	c, cm, backing, format, err := m.planEncode(ctx, id, name)
	unlock()
	if err != nil || cm.Parked == nil {
		return err
	}
	start := time.Now()
	dir := filepath.Dir(cm.Parked.Mem)
	tmp := filepath.Join(dir, memEncodeTmp)
	os.Remove(tmp)
	derr := m.disks.Diff(ctx, tmp, cm.Parked.Mem, backing, format)
	if derr == nil {
		m.crashPoint("memchain.encoded")
	}

	unlock = m.lock(id)
	defer unlock()
	again, c2, cm2, backing2, _, err := m.replanEncode(ctx, id, name, backing)
	switch {
	case err != nil || cm2.Parked == nil:
		os.Remove(tmp)
		return err
	case again:
		os.Remove(tmp)
		m.cfg.Log.Info("checkpoint memory: its base went meanwhile; re-encoding it again", "session", id, "checkpoint", name)
		m.encodeLater(id, name)
		return nil
	case derr != nil:
		return derr
	}
	c, cm, backing = c2, cm2, backing2
	final := filepath.Join(dir, memDiffFile)
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return err
	}
	syncDirPath(dir)
	m.crashPoint("memchain.renamed")
	raw := cm.Parked.Mem
	p := *cm.Parked
	p.Mem, p.MemFormat = final, memQcow2
	p.DiskBytes = allocated(p.State) + allocated(final)
	cm.Parked = &p
	c.Bytes = p.DiskBytes + allocated(cm.Disk)
	c.Manifest = cm.encode()
	// Recorded even if the manager stops meanwhile: the file is in place.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := m.cfg.Store.UpdateCheckpoint(rctx, c); err != nil {
		// The write may have been made all the same (an error after its
		// commit): the record says which file to keep. Where it cannot
		// be read, both stay, and the next start removes the one it does
		// not name (recoverMemFiles).
		cur, gerr := m.cfg.Store.GetCheckpoint(rctx, id, name)
		if gerr != nil {
			return err
		}
		if xm, derr := decodeMachine(cur.Manifest); derr == nil && xm.Parked != nil && xm.Parked.Mem == final {
			os.Remove(raw)
			return nil
		}
		os.Remove(final) // the record names the raw copy still
		return err
	}
	m.crashPoint("memchain.recorded")
	os.Remove(raw)
	base := "none"
	if backing != "" {
		base = filepath.Base(filepath.Dir(backing)) + "/" + filepath.Base(backing)
	}
	m.cfg.Log.Info("checkpoint memory re-encoded", "session", id, "checkpoint", name,
		"base", base, "bytes", allocated(final), "ms", time.Since(start).Milliseconds())
	return nil
}

// planEncode returns, under session id's lock, its checkpoint name still
// kept raw and the base to encode its RAM onto (memBase); cm.Parked is nil
// where there is nothing to do (the session or checkpoint gone, or the
// RAM encoded already).
func (m *Manager) planEncode(ctx context.Context, id, name string) (c store.Checkpoint, cm machine, backing, format string, err error) {
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return c, cm, "", "", nil
	}
	if err != nil {
		return c, cm, "", "", err
	}
	list, err := m.cfg.Store.ListCheckpoints(ctx, id)
	if err != nil {
		return c, cm, "", "", err
	}
	found := false
	for _, x := range list {
		if x.Name == name {
			c, found = x, true
		}
	}
	if !found {
		return c, machine{}, "", "", nil
	}
	if cm, err = decodeMachine(c.Manifest); err != nil || cm.Parked == nil {
		return c, machine{}, "", "", fmt.Errorf("manifest: %v", err)
	}
	if cm.Parked.MemFormat == memQcow2 {
		return c, machine{}, "", "", nil
	}
	backing, format = m.memBase(ctx, rec, c, list)
	return c, cm, backing, format, nil
}

// replanEncode is planEncode again, at the record of an encoding made
// onto backing: again is set where the base it would choose now differs
// (the one used went meanwhile).
func (m *Manager) replanEncode(ctx context.Context, id, name, backing string) (again bool, c store.Checkpoint, cm machine, now, format string, err error) {
	c, cm, now, format, err = m.planEncode(ctx, id, name)
	return err == nil && cm.Parked != nil && now != backing, c, cm, now, format, err
}

// memBase returns the file checkpoint c's RAM is re-encoded onto, and its
// format: the RAM of the checkpoint c's session's RAM last was (c's
// machine.MemFrom: taken before c, or rolled back to), if it is kept as
// qcow2; else that of the latest checkpoint of list (session rec's) taken
// before c and kept so; named relative to c's dir; else rec's template
// version's RAM file; else "" (the encoding holds all of it).
func (m *Manager) memBase(ctx context.Context, rec store.Session, c store.Checkpoint, list []store.Checkpoint) (file, format string) {
	if cm, err := decodeMachine(c.Manifest); err == nil && cm.MemFrom != "" && cm.MemFrom != c.Name {
		for _, x := range list {
			if xm, err := decodeMachine(x.Manifest); err == nil && x.Name == cm.MemFrom && xm.Parked != nil && xm.Parked.MemFormat == memQcow2 {
				return filepath.Join("..", x.Name, memDiffFile), memQcow2
			}
		}
	}
	for i := len(list) - 1; i >= 0; i-- {
		x := list[i]
		if x.Name == c.Name || x.CreatedAt.After(c.CreatedAt) {
			continue
		}
		xm, err := decodeMachine(x.Manifest)
		if err != nil || xm.Parked == nil || xm.Parked.MemFormat != memQcow2 {
			continue
		}
		return filepath.Join("..", x.Name, memDiffFile), memQcow2
	}
	cm, err := decodeMachine(c.Manifest)
	if rec.Template == "" || err != nil || cm.Parked == nil {
		return "", ""
	}
	_, tm, err := m.version(ctx, rec.Template, max(rec.TemplateVersion, 1))
	if err != nil || tm.Parked.MemFormat == memQcow2 {
		return "", ""
	}
	if fi, err := os.Stat(tm.Parked.Mem); err != nil || fi.Size() != cm.Parked.MemSize {
		return "", ""
	}
	return tm.Parked.Mem, "raw"
}

// rebaseMemChildren rebases, before checkpoint c of session id goes, the
// RAM of each other checkpoint in list that rests on c's onto what c's
// rests on, so that it reads the same without it. Each child is rebased
// in a copy that is synced and renamed over it: a server that dies
// meanwhile leaves every child whole, resting on c or on c's base.
func (m *Manager) rebaseMemChildren(ctx context.Context, id string, c store.Checkpoint, list []store.Checkpoint) error {
	cm, err := decodeMachine(c.Manifest)
	if err != nil || cm.Parked == nil || cm.Parked.MemFormat != memQcow2 {
		return nil // a raw copy: nothing rests on it
	}
	base, baseFormat, err := m.disks.Backing(ctx, cm.Parked.Mem)
	if err != nil {
		return fmt.Errorf("memory base of %s: %w", c.Name, err)
	}
	if base == "" {
		baseFormat = ""
	} else if baseFormat == "" {
		baseFormat = memQcow2
	}
	root := filepath.Join(m.dir(id), checkpointsDir)
	for _, x := range list {
		if x.Name == c.Name {
			continue
		}
		xm, err := decodeMachine(x.Manifest)
		if err != nil || xm.Parked == nil || xm.Parked.MemFormat != memQcow2 {
			continue
		}
		b, _, err := m.disks.Backing(ctx, xm.Parked.Mem)
		if err != nil {
			return fmt.Errorf("memory base of %s: %w", x.Name, err)
		}
		if b != cm.Parked.Mem {
			continue
		}
		name := base
		if filepath.Dir(filepath.Dir(base)) == root {
			name = filepath.Join("..", filepath.Base(filepath.Dir(base)), filepath.Base(base))
		}
		tmp := filepath.Join(filepath.Dir(xm.Parked.Mem), memDiffTmp)
		os.Remove(tmp)
		copyRest, err := startCopy(xm.Parked.Mem, tmp)
		if err == nil {
			err = copyRest(false)
		}
		if err == nil {
			err = m.disks.Rebase(ctx, tmp, name, baseFormat, true)
		}
		if err == nil {
			err = syncPath(tmp)
		}
		if err == nil {
			m.crashPoint("memchain.rebasing")
			err = os.Rename(tmp, xm.Parked.Mem)
		}
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("rebase the memory of %s: %w", x.Name, err)
		}
		syncDirPath(filepath.Dir(xm.Parked.Mem))
		xm.Parked.DiskBytes = allocated(xm.Parked.State) + allocated(xm.Parked.Mem)
		x.Bytes = xm.Parked.DiskBytes + allocated(xm.Disk)
		x.Manifest = xm.encode()
		if err := m.cfg.Store.UpdateCheckpoint(ctx, x); err != nil {
			m.cfg.Log.Warn("checkpoint size not updated after a rebase", "session", id, "checkpoint", x.Name, "err", err)
		}
		m.crashPoint("memchain.rebased")
	}
	return nil
}

// recoverMemFiles, at start, removes in each recorded checkpoint's dir of
// session id the RAM file its manifest does not name (an encoding or a
// rebase cut short) and queues the encoding of those kept raw.
func (m *Manager) recoverMemFiles(id string, list []store.Checkpoint) {
	for _, c := range list {
		cm, err := decodeMachine(c.Manifest)
		if err != nil || cm.Parked == nil {
			continue
		}
		dir := filepath.Dir(cm.Parked.Mem)
		os.Remove(filepath.Join(dir, memDiffTmp))
		os.Remove(filepath.Join(dir, memEncodeTmp))
		for _, f := range []string{vmm.MemFile, memDiffFile} {
			if p := filepath.Join(dir, f); p != cm.Parked.Mem {
				if err := os.Remove(p); err == nil {
					m.cfg.Log.Info("removed a checkpoint memory file its record does not name (cut short by a server stop)", "session", id, "checkpoint", c.Name, "file", f)
				}
			}
		}
		if cm.Parked.MemFormat != memQcow2 {
			m.encodeLater(id, c.Name)
		}
	}
}

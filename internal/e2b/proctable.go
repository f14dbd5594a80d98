package e2b

import (
	"bytes"
	"context"
	"encoding/json"
	"path"
	"strconv"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/cove-dev/cove/api"
	processpb "github.com/cove-dev/cove/internal/e2b/envdpb/process"
)

// tableDir is the guest directory of the process table's files (see
// process.go): /run is the guest's runtime state, gone with a reboot as
// the processes are.
const tableDir = "/run/cove-e2b/procs"

// savedProc is one process's file in tableDir.
type savedProc struct {
	PID uint32          `json:"pid"`
	Tag string          `json:"tag,omitempty"`
	TTY bool            `json:"tty,omitempty"`
	Cfg json.RawMessage `json:"config"` // process.ProcessConfig in protojson
}

// save writes p's entry to the guest; false if it could not (the process
// then lives in this server's table only, and is logged).
func (s *Server) save(ctx context.Context, id string, p *proc) bool {
	cfg, err := protojson.Marshal(p.cfg)
	if err == nil {
		var b []byte
		if b, err = json.Marshal(savedProc{PID: p.pid, Tag: p.tag, TTY: p.tty, Cfg: cfg}); err == nil {
			err = s.cfg.Sessions.WriteFile(ctx, id, path.Join(tableDir, strconv.FormatUint(uint64(p.pid), 10)), 0o600, bytes.NewReader(b))
		}
	}
	if err != nil {
		s.log.WarnContext(ctx, "e2b: save the process table's entry in the guest: a restarted server will not know the process",
			"session", id, "pid", p.pid, "err", err)
		return false
	}
	return true
}

// forget removes pid's entry from the guest.
func (s *Server) forget(ctx context.Context, id string, pid uint32) {
	p := path.Join(tableDir, strconv.FormatUint(uint64(pid), 10))
	if err := s.cfg.Sessions.Remove(ctx, id, p); err != nil && !api.IsCode(err, api.CodeNotFound) {
		s.log.WarnContext(ctx, "e2b: remove the process table's entry in the guest", "session", id, "pid", pid, "err", err)
	}
}

// recover rebuilds sandbox id's process table from the guest's files,
// once per table (this server's first process call for the sandbox): each
// process another server started is attached to again. A file whose
// command the guest no longer has is removed. Failures leave the table
// as it is, to be tried again by the next call.
func (s *Server) recover(ctx context.Context, id string, t *procTable) {
	t.recovering.Lock()
	defer t.recovering.Unlock()
	if t.recovered {
		return
	}
	fis, err := s.cfg.Sessions.ListDir(ctx, id, tableDir)
	if api.IsCode(err, api.CodeNotFound) {
		t.recovered = true
		return
	}
	if err != nil {
		s.log.WarnContext(ctx, "e2b: read the process table in the guest", "session", id, "err", err)
		return
	}
	for _, fi := range fis {
		pid, err := strconv.ParseUint(fi.Name, 10, 32)
		if err != nil || fi.IsDir {
			continue
		}
		t.mu.Lock()
		_, known := t.procs[uint32(pid)]
		t.mu.Unlock()
		if known {
			continue
		}
		var sp savedProc
		cfg := &processpb.ProcessConfig{}
		b, err := s.guestFile(ctx, id, path.Join(tableDir, fi.Name))
		if err == nil {
			err = json.Unmarshal(b, &sp)
		}
		if err == nil {
			err = protojson.Unmarshal(sp.Cfg, cfg)
		}
		if err != nil || sp.PID != uint32(pid) {
			s.log.WarnContext(ctx, "e2b: a broken entry of the process table in the guest", "session", id, "file", fi.Name, "err", err)
			continue
		}
		// The attachment lasts as the sandbox's processes do, not as
		// this request.
		xp, err := s.cfg.Sessions.Attach(t.ctx, id, int(pid))
		if api.IsCode(err, api.CodeNotFound) {
			s.forget(ctx, id, uint32(pid)) // ended and read, or never ours
			continue
		}
		if err != nil {
			s.log.WarnContext(ctx, "e2b: attach to a process of the guest's table", "session", id, "pid", pid, "err", err)
			return
		}
		p := &proc{pid: uint32(pid), tag: sp.Tag, cfg: cfg, p: xp, tty: sp.TTY, saved: make(chan bool, 1), subs: map[*sub]struct{}{}}
		p.saved <- true
		t.mu.Lock()
		t.procs[p.pid] = p
		t.mu.Unlock()
		s.pumps.Go(func() { s.pump(t, id, p) })
	}
	t.recovered = true
}

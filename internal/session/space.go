package session

import (
	"context"

	"golang.org/x/sys/unix"

	"github.com/cove-dev/cove/api"
)

// File systems whose copies are reflinks (startCopy clones there), so a
// copy takes no room up front.
const (
	btrfsMagic = 0x9123683e
	xfsMagic   = 0x58465342
)

// roomFor refuses, before anything changes, what would write need bytes
// of copies into dir's file system where it has less free: a checkpoint
// whose RAM copy, a fork whose copies, would run out of room part way.
// A file system that clones files is not asked (its copies are
// reflinks), nor one that cannot say; a copy still reports a disk that
// fills meanwhile.
func roomFor(dir string, need int64, what string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil
	}
	if st.Type == btrfsMagic || st.Type == xfsMagic {
		return nil
	}
	free := int64(st.Bavail) * st.Bsize
	if free >= need {
		return nil
	}
	return api.Errorf(api.CodeInsufficientStorage, "%s: no space left on the host's disk: it needs %d MiB, %d MiB are free",
		what, (need+(1<<20)-1)>>20, free>>20)
}

// memBytes is what a raw copy of parked p's RAM file takes: its data, or,
// for one kept as a chain of differences (memchain.go), what the chain's
// files hold together, at most the RAM's size (a cluster read back comes
// from one of them).
func (m *Manager) memBytes(ctx context.Context, p *parked) int64 {
	if p.MemFormat != memQcow2 {
		return allocated(p.Mem)
	}
	n := m.chainBytes(ctx, p.Mem, func(l string) bool { return l != "" })
	if p.MemSize > 0 {
		n = min(n, p.MemSize)
	}
	return n
}

// chainBytes is what the files of the qcow2 chain from top down take, as
// far as within holds for them and their headers can be read (a raw base
// is counted, then ends it), at most 65 files.
func (m *Manager) chainBytes(ctx context.Context, top string, within func(string) bool) int64 {
	var n int64
	for l, i := top, 0; within(l) && i <= 64; i++ {
		n += allocated(l)
		b, _, err := m.disks.Backing(ctx, l)
		if err != nil {
			break
		}
		l = b
	}
	return n
}

// notSchedulable is the refusal of op on this server's node while it
// takes no new sessions.
func (m *Manager) notSchedulable(op string) error {
	return api.Errorf(api.CodeUnavailable, "%s: no node fits: node %s takes no new sessions (cordoned, draining or dead)", op, m.cfg.Node)
}

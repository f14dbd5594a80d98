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
	var n int64
	for l, i := p.Mem, 0; l != "" && i <= 64; i++ {
		n += allocated(l)
		b, _, err := m.disks.Backing(ctx, l)
		if err != nil {
			break // a raw base (not qcow2), or a header not read: counted
		}
		l = b
	}
	if p.MemSize > 0 {
		n = min(n, p.MemSize)
	}
	return n
}

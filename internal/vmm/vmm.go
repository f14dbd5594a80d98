// Package vmm declares the seam between cove and a virtual machine
// monitor: a Driver boots and re-adopts VMs, makes their disk files
// (Disks) and ends VMM processes no handle names; a VM is one running
// guest. The QEMU implementation lives in vmm/qemu, an in-process one for
// tests in vmm/fake. The session layer reaches the VMM, the disk files'
// format and the VMM processes only through these interfaces (a test in
// internal/deptest holds it to that).
package vmm

import (
	"context"
	"errors"
	"net"
	"time"
)

// MemFile is the name of a VM's RAM file in its directory (Spec.Dir): the
// guest's memory, mapped shared by the VMM, so that a save writes only the
// device state and a parked VM is its RAM file, its state and its disk.
// Every driver keeps it there under this name: the session layer copies it
// (a clone's, a fork's, a checkpoint's) and checks it.
const MemFile = "mem"

// Spec is everything a driver needs to boot one VM.
type Spec struct {
	// ID names the VM (the session id); it appears in the VMM's command
	// line so leftover processes can be found.
	ID string
	// Dir is the VM's private directory (0700): sockets, logs, overlay
	// disk and memory file (MemFile) live there.
	Dir string

	Kernel  string // uncompressed ELF kernel
	Initrd  string
	Cmdline string // extra kernel command line
	// Disk is the VM's writable root disk (a qcow2 overlay on a read-only
	// base).
	Disk      string
	MemoryMiB int
	CPUs      int

	// Started, if set, is called by Snapshotter.Restore as soon as the
	// VMM process runs, with the handle Adopt takes, before anything is
	// loaded: a caller records it so that a crash from then on finds the
	// process. An error fails the restore.
	Started func(ctx context.Context, handle []byte) error
	// BeforeLoad, if set, is called by Snapshotter.Restore once the VMM
	// process runs and before it loads the state; an error fails the
	// restore. The RAM file may be completed meanwhile: a clone's copy of
	// it overlaps the VMM's start.
	BeforeLoad func(context.Context) error
	// BeforeRun, if set, is called by Snapshotter.Restore once the state
	// is loaded and before the guest runs: until then the snapshot's
	// files are unchanged (a VMM killed earlier leaves the snapshot as
	// good as before); from then on the guest changes its RAM file. An
	// error fails the restore with the guest never run.
	BeforeRun func(context.Context) error
}

// Driver boots VMs and re-adopts those that outlived the process that
// booted them.
//
// Boot returns once the VMM process runs and its control channel answers;
// it does not wait for the guest. On error nothing is left running.
//
// Adopt takes a handle from VM.Handle (possibly written by an earlier
// server process) and returns the VM if its process still runs, or an error
// if it is gone or the handle is of an unknown version.
//
// KillVMs ends the VMM processes that run VMs whose directory is under
// dirRoot and whose id match reports true, whether or not a handle names
// them (one started for a boot or a restore cut short before its caller
// recorded it, one an earlier process left), and returns once they are
// gone or ctx ends, with the PIDs it killed. A VMM process started ahead
// that runs no VM yet (a spare) is never killed by it.
type Driver interface {
	Boot(ctx context.Context, spec Spec) (VM, error)
	Adopt(ctx context.Context, handle []byte) (VM, error)
	// Accel names the accelerator the driver uses ("kvm" or "tcg").
	Accel() string
	// Disks makes and changes the VMs' disk files.
	Disks() Disks
	KillVMs(ctx context.Context, dirRoot string, match func(id string) bool) []int
}

// Sweeper is implemented by drivers that clean up after VMs an earlier
// process left: Sweep ends the VMM processes under dirRoot whose VM id
// keep reports false (and any started ahead that no VM claimed), waits for
// them, removes what they held (a spare's directory, cgroups), and returns
// the PIDs it killed.
type Sweeper interface {
	Sweep(dirRoot string, keep func(id string) bool) []int
}

// Disks makes and changes the VMs' disk files: qcow2 overlays stacked on a
// read-only base (an image's raw root file system, or a qcow2 file). A
// path may be relative only where it is said to be; a relative backing
// file name is resolved, as the VMM resolves it, against the directory of
// the file that names it. Every method leaves its files as they were when
// it fails, but a file it was to create may be left partly written.
type Disks interface {
	// Overlay creates path, an empty qcow2 overlay on backing, a file of
	// format backingFormat ("raw" or "qcow2"); backing may be relative.
	Overlay(ctx context.Context, path, backing, backingFormat string) error
	// Rebase makes the overlay path rest on backing (format
	// backingFormat; it may be relative) instead of its current backing
	// file. With copy, what path's current chain holds that backing lacks
	// is copied into path first, so that path reads the same after;
	// without it only the name path records changes: the caller vouches
	// that backing holds what the old one did. A backing of "" (with
	// copy) leaves path resting on nothing, holding all it reads.
	Rebase(ctx context.Context, path, backing, backingFormat string, copy bool) error
	// Flatten writes dst (created), a qcow2 overlay on base (format
	// baseFormat) that reads as the qcow2 file src does: what src's chain
	// holds above base is copied into dst, so dst rests on base alone.
	Flatten(ctx context.Context, src, dst, base, baseFormat string) error
	// Backing returns the backing file the qcow2 file path rests on, made
	// absolute, and its format ("" where the file does not record it);
	// "" when it rests on none. A file that is not qcow2 (a raw base,
	// which rests on nothing) gives an error wrapping ErrNotQcow2.
	Backing(ctx context.Context, path string) (file, format string, err error)
	// Diff creates path, a qcow2 file on backing (format backingFormat;
	// it may be relative) that reads as the raw file src does and holds
	// only the clusters in which src differs from what backing reads: a
	// RAM file kept as the pages that changed since another. With backing
	// "", path rests on nothing and holds src's non-zero data. Synced.
	Diff(ctx context.Context, path, src, backing, backingFormat string) error
	// Raw writes dst (created), a raw sparse file that reads as the file
	// src of format srcFormat ("qcow2", with its chain, or "raw") does;
	// synced. The format is never probed: a raw RAM file holds what the
	// guest wrote, which may look like a qcow2 header.
	Raw(ctx context.Context, src, srcFormat, dst string) error
}

// ErrNotQcow2 marks a disk file that is not a qcow2 file (see
// Disks.Backing).
var ErrNotQcow2 = errors.New("not a qcow2 file")

// Status is what a VM is doing, for recovery after a crash.
type Status string

// Statuses. A guest that is Paused or Incoming has not run since the
// state it holds was saved or loaded.
const (
	StatusRunning  Status = "running"  // the guest runs
	StatusPaused   Status = "paused"   // stopped: after a save's migration, or never continued
	StatusIncoming Status = "incoming" // waiting for, or loading, a saved state
	StatusSaving   Status = "saving"   // a save's migration is under way
)

// VM is one running virtual machine.
type VM interface {
	// DialAgent connects to the guest agent's channel. Only one connection
	// may be open at a time; it can be re-established after it closes.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Handle is a versioned, opaque description of the VM that Adopt takes.
	Handle() []byte
	// PID is the VMM process id.
	PID() int
	// Stop stops the VM: gracefully if it can within ctx, then by force.
	// It returns once the VMM process is gone. Stopping a stopped VM is a
	// no-op.
	Stop(ctx context.Context) error
	// Release lets go of the VM without stopping it: the control
	// connection closes, so that another process can Adopt it.
	Release() error
	// Done is closed when the VMM process exits for any reason.
	Done() <-chan struct{}
	// ConsoleTail returns the last bytes the guest wrote to its console,
	// for error messages about a guest that crashed or never answered.
	ConsoleTail() string
	// Diagnose says what the VMM knows of a guest that does not answer
	// (run state, device queues, interrupts), for the log: one line,
	// never an error (what it cannot find out, it says).
	Diagnose(ctx context.Context) string
	// Status says what the VM is doing (see Status).
	Status(ctx context.Context) (Status, error)
	// Resume lets a Paused guest run again; a save's migration still under
	// way is cancelled first. Resuming a running guest is a no-op.
	Resume(ctx context.Context) error
}

// Freezer is implemented by drivers that can stop a VM's whole VMM
// process in place and let it go on later: a node cut off from the store
// freezes its VMs, so that a session another node takes over never runs
// twice, and thaws those still its own once it can tell (the session
// layer's self-fencing).
//
// Freeze stops vm's VMM process entirely (the guest, its devices and the
// VMM's control channel; memory and device state stay as they are),
// whatever the VMM is doing: unlike a pause through the control channel,
// nothing in the VMM undoes it. A frozen VM answers nothing (its agent
// channel and control calls wait, or fail when their context ends) until
// Thaw, which lets the process run on where it stopped; Stop ends a
// frozen VM at once, without thawing it. Freezing a frozen VM, or thawing
// a running one, is a no-op.
type Freezer interface {
	Freeze(ctx context.Context, vm VM) error
	Thaw(ctx context.Context, vm VM) error
}

// Snapshotter is implemented by drivers that can park a whole VM on disk
// and bring it back.
//
// Save pauses the VM, writes its device state to statePath (atomically:
// the file appears complete or not at all), makes the VM's RAM file
// durable, and ends the VMM process. If Save fails before the state is
// complete, the VM keeps running.
//
// Restore starts a VMM for spec from a state file written by Save: spec
// must describe the same machine (devices, memory size, kernel), spec.Dir
// must hold that VM's RAM file, and spec.Disk the disk as it was saved. The
// guest runs when Restore returns.
//
// A Restore that fails after BeforeRun returns an error wrapping
// ErrNotRun when it knows the guest never ran (the VMM was gone before it
// was told to continue): the snapshot's files are then unchanged.
type Snapshotter interface {
	Save(ctx context.Context, vm VM, statePath string) (SaveStats, error)
	Restore(ctx context.Context, spec Spec, statePath string) (VM, RestoreStats, error)
}

// ErrGuestStalled marks a Boot whose guest came up unable to run on (under
// TCG: without a timer) as often as the driver tried: the host is too
// loaded to boot it now.
var ErrGuestStalled = errors.New("the guest stalled in its boot")

// ErrNotRun marks a failed Restore whose guest never ran (see
// Snapshotter).
var ErrNotRun = errors.New("the guest never ran")

// SaveStats says where a save's time went.
type SaveStats struct {
	Migrate    time.Duration // device state written
	Sync       time.Duration // RAM file fsync
	Total      time.Duration
	StateBytes int64
}

// RestoreStats says where a restore's time went.
type RestoreStats struct {
	Spare bool          // a VMM process started ahead was used
	Spawn time.Duration // process start (or a spare's claim) to QMP ready
	Load  time.Duration // device state loaded
	Total time.Duration
}

// Checkpointer is implemented by drivers that can save a running VM's
// whole machine without ending it: a checkpoint, which Snapshotter.Restore
// takes as it takes a parked VM's state.
//
// Checkpoint pauses vm and, while it is paused: switches its disk to
// req.NewDisk, a new qcow2 overlay (which the driver creates) whose
// backing file is the disk vm wrote until then, so that disk is never
// written again and becomes the checkpoint's; writes the device state to
// req.State (complete or absent, synced); and calls req.WhilePaused, which
// copies the RAM file (Spec.Dir's) while nothing changes it. Then the
// guest runs again. Whatever fails, the guest runs on when Checkpoint
// returns if its VMM does; Disk says which disk it writes then.
//
// Disk returns the path of the disk vm writes now: after a checkpoint it
// is the last NewDisk that took, whatever Checkpoint returned (a server
// that died in one asks the VM).
type Checkpointer interface {
	Checkpoint(ctx context.Context, vm VM, req CheckpointRequest) (CheckpointStats, error)
	Disk(ctx context.Context, vm VM) (string, error)
}

// CheckpointRequest says where a checkpoint's files go (see Checkpointer).
type CheckpointRequest struct {
	State   string // device state file, created
	NewDisk string // the VM's new disk, created: an overlay on its current one
	// WhilePaused, if set, runs while the guest is paused, once the state
	// is written; an error fails the checkpoint (the guest runs on, on
	// NewDisk).
	WhilePaused func(context.Context) error
}

// CheckpointStats says where a checkpoint's time went.
type CheckpointStats struct {
	Pause      time.Duration // the guest paused: what a running session sees
	Disk       time.Duration // the disk switched
	Migrate    time.Duration // device state written
	Copy       time.Duration // WhilePaused
	StateBytes int64
}

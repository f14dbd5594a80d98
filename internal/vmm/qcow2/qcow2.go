// Package qcow2 makes and changes VMs' qcow2 disk files with qemu-img: the
// vmm.Disks that the QEMU driver and the fake driver both serve, so that
// the session layer stacks real overlays over either.
package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/cove-dev/cove/internal/command"
	"github.com/cove-dev/cove/internal/vmm"
)

// Disks is vmm.Disks over qemu-img. Its zero value is ready to use.
type Disks struct{}

var _ vmm.Disks = Disks{}

// qemuImg runs qemu-img with args.
func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	out, err := command.Output(ctx, exec.CommandContext(ctx, "qemu-img", args...))
	if err != nil && strings.Contains(err.Error(), "No space left on device") {
		// The file system is full: said as the errno, which callers
		// test for (errors.Is) and which reads "no space left on device".
		err = fmt.Errorf("%w: %w", syscall.ENOSPC, err)
	}
	return out, err
}

// Overlay implements vmm.Disks.
func (Disks) Overlay(ctx context.Context, path, backing, backingFormat string) error {
	if _, err := qemuImg(ctx, "create", "-q", "-f", "qcow2", "-b", backing, "-F", backingFormat, path); err != nil {
		return fmt.Errorf("qcow2: overlay %s: %w", filepath.Base(path), err)
	}
	return nil
}

// Rebase implements vmm.Disks.
func (Disks) Rebase(ctx context.Context, path, backing, backingFormat string, copy bool) error {
	args := []string{"rebase", "-q", "-f", "qcow2", "-b", backing, "-F", backingFormat, path}
	if backing == "" {
		args = []string{"rebase", "-q", "-f", "qcow2", "-b", "", path}
	}
	if !copy {
		args = append([]string{"rebase", "-u"}, args[1:]...)
	}
	if _, err := qemuImg(ctx, args...); err != nil {
		return fmt.Errorf("qcow2: rebase %s: %w", filepath.Base(path), err)
	}
	return nil
}

// Flatten implements vmm.Disks. qemu-img convert -B would copy only what
// src's own file holds (QEMU 7.2 reads the top layer's allocation alone
// when the target has a backing file), losing what the layers between
// src and base hold; so dst is made an overlay on src and rebased onto
// base, which copies in what the whole chain above base holds.
func (d Disks) Flatten(ctx context.Context, src, dst, base, baseFormat string) error {
	abs, err := filepath.Abs(src)
	if err != nil {
		return fmt.Errorf("qcow2: flatten %s: %w", filepath.Base(src), err)
	}
	if _, err := qemuImg(ctx, "create", "-q", "-f", "qcow2", "-b", abs, "-F", "qcow2", dst); err != nil {
		return fmt.Errorf("qcow2: flatten %s: %w", filepath.Base(src), err)
	}
	if _, err := qemuImg(ctx, "rebase", "-q", "-f", "qcow2", "-b", base, "-F", baseFormat, dst); err != nil {
		os.Remove(dst)
		return fmt.Errorf("qcow2: flatten %s: %w", filepath.Base(src), err)
	}
	return nil
}

// Diff implements vmm.Disks. qemu-img convert -B writes every allocated
// cluster of a raw source, alike or not; a copying rebase compares: path
// is made an empty overlay on src and rebased onto backing, which writes
// into it only what src reads differently from backing.
func (Disks) Diff(ctx context.Context, path, src, backing, backingFormat string) error {
	fail := func(err error) error {
		os.Remove(path)
		return fmt.Errorf("qcow2: diff %s: %w", filepath.Base(path), err)
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return fail(err)
	}
	if backing == "" {
		// Nothing to differ from: all the data, zero blocks left out.
		if _, err := qemuImg(ctx, "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size="+memCluster, abs, path); err != nil {
			return fail(err)
		}
	} else {
		if _, err := qemuImg(ctx, "create", "-q", "-f", "qcow2", "-o", "cluster_size="+memCluster, "-b", abs, "-F", "raw", path); err != nil {
			return fail(err)
		}
		if _, err := qemuImg(ctx, "rebase", "-q", "-f", "qcow2", "-b", backing, "-F", backingFormat, path); err != nil {
			return fail(err)
		}
	}
	if err := syncFile(path); err != nil {
		return fail(err)
	}
	return nil
}

// Raw implements vmm.Disks: qemu-img convert leaves zero blocks as holes.
func (Disks) Raw(ctx context.Context, src, srcFormat, dst string) error {
	if _, err := qemuImg(ctx, "convert", "-q", "-f", srcFormat, "-O", "raw", src, dst); err != nil {
		os.Remove(dst)
		return fmt.Errorf("qcow2: raw %s: %w", filepath.Base(src), err)
	}
	if err := syncFile(dst); err != nil {
		os.Remove(dst)
		return fmt.Errorf("qcow2: raw %s: %w", filepath.Base(src), err)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Backing implements vmm.Disks. It reads the file's header itself (no
// program runs): the session layer asks it of every layer it walks.
func (Disks) Backing(ctx context.Context, path string) (file, format string, err error) {
	return BackingFile(path)
}

// Offsets and limits of the qcow2 header (QEMU's docs/interop/qcow2.txt).
const (
	magic            = "QFI\xfb"
	v2HeaderLen      = 72
	maxHeaderRead    = 64 << 10 // extensions and the backing name sit in the first cluster
	maxBackingName   = 1023     // QEMU's limit
	extEnd           = 0
	extBackingFormat = 0xE2792ACA
)

// BackingFile returns the backing file the qcow2 file at path names, made
// absolute against path's directory, and the backing format its header
// extension records ("" if none); "" for no backing file. A file that is
// not qcow2 gives an error wrapping vmm.ErrNotQcow2.
func BackingFile(path string) (file, format string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("qcow2: %w", err)
	}
	defer f.Close()
	h := make([]byte, maxHeaderRead)
	n, err := f.ReadAt(h, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", "", fmt.Errorf("qcow2: header of %s: %w", path, err)
	}
	h = h[:n]
	if len(h) < v2HeaderLen || string(h[:4]) != magic {
		return "", "", fmt.Errorf("qcow2: %s: %w", path, vmm.ErrNotQcow2)
	}
	off, size := binary.BigEndian.Uint64(h[8:16]), binary.BigEndian.Uint32(h[16:20])
	if off == 0 || size == 0 {
		return "", "", nil
	}
	if size > maxBackingName {
		return "", "", fmt.Errorf("qcow2: header of %s: backing file name of %d bytes", path, size)
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", "", fmt.Errorf("qcow2: backing file name of %s: %w", path, err)
	}
	file = string(name)
	if !filepath.IsAbs(file) {
		file = filepath.Join(filepath.Dir(path), file)
	}
	return file, backingFormat(h), nil
}

// backingFormat returns the backing format that the header extensions in
// h (the start of a qcow2 file) record, or "".
func backingFormat(h []byte) string {
	at := uint64(v2HeaderLen)
	if binary.BigEndian.Uint32(h[4:8]) >= 3 && len(h) >= 104 {
		at = uint64(binary.BigEndian.Uint32(h[100:104]))
	}
	for at+8 <= uint64(len(h)) {
		typ, n := binary.BigEndian.Uint32(h[at:]), uint64(binary.BigEndian.Uint32(h[at+4:]))
		at += 8
		if typ == extEnd || at+n > uint64(len(h)) {
			return ""
		}
		if typ == extBackingFormat {
			return string(h[at : at+n])
		}
		at += (n + 7) &^ 7
	}
	return ""
}

// memCluster is the cluster size of the RAM diffs Diff writes: a page.
// The guest's changes between two checkpoints are scattered pages; with
// qcow2's default 64 KiB clusters each took a whole cluster (measured on
// a tiny guest after a 4 KiB write: 9.7 MiB added, against 2.5 MiB with
// 4 KiB clusters, the re-encoding and the read back as fast).
const memCluster = "4096"

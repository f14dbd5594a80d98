// Package qcow2 makes and changes VMs' qcow2 disk files with qemu-img: the
// vmm.Disks that the QEMU driver and the fake driver both serve, so that
// the session layer stacks real overlays over either.
package qcow2

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"

	"github.com/cove-dev/cove/internal/command"
	"github.com/cove-dev/cove/internal/vmm"
)

// Disks is vmm.Disks over qemu-img. Its zero value is ready to use.
type Disks struct{}

var _ vmm.Disks = Disks{}

// qemuImg runs qemu-img with args.
func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	return command.Output(ctx, exec.CommandContext(ctx, "qemu-img", args...))
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
	if !copy {
		args = append([]string{"rebase", "-u"}, args[1:]...)
	}
	if _, err := qemuImg(ctx, args...); err != nil {
		return fmt.Errorf("qcow2: rebase %s: %w", filepath.Base(path), err)
	}
	return nil
}

// Flatten implements vmm.Disks.
func (Disks) Flatten(ctx context.Context, src, dst, base, baseFormat string) error {
	if _, err := qemuImg(ctx, "convert", "-q", "-f", "qcow2", "-O", "qcow2", "-B", base, "-F", baseFormat, src, dst); err != nil {
		return fmt.Errorf("qcow2: flatten %s: %w", filepath.Base(src), err)
	}
	return nil
}

// Backing implements vmm.Disks. -U reads a file a running VMM holds
// locked.
func (Disks) Backing(ctx context.Context, path string) (file, format string, err error) {
	out, err := qemuImg(ctx, "info", "-U", "--output=json", path)
	if err != nil {
		return "", "", fmt.Errorf("qcow2: info %s: %w", filepath.Base(path), err)
	}
	var info struct {
		Backing string `json:"full-backing-filename"`
		Format  string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return "", "", fmt.Errorf("qcow2: info %s: %w", path, err)
	}
	return info.Backing, info.Format, nil
}

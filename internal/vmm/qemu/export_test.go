package qemu

import (
	"context"
	"os"
	"strings"

	"github.com/cove-dev/cove/internal/vmm"
)

// BootWithFileConsole boots spec with the console chardev of earlier
// versions, a file QEMU appends to, for the test that a machine saved so
// restores with today's console.
func (d *Driver) BootWithFileConsole(ctx context.Context, spec vmm.Spec) (vmm.VM, error) {
	a := d.Args(spec)
	for i, s := range a {
		if strings.HasPrefix(s, "socket,id=console,") {
			a[i] = "file,id=console,path=" + spec.Dir + "/" + ConsoleLog
		}
	}
	// QEMU opens it as its user.
	log := spec.Dir + "/" + ConsoleLog
	if err := os.WriteFile(log, nil, 0o600); err != nil {
		return nil, err
	}
	if d.uid >= 0 {
		if err := os.Chown(log, d.uid, d.gid); err != nil {
			return nil, err
		}
	}
	return d.spawn(ctx, spec, a, spawnOpts{})
}

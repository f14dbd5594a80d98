package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cove-dev/cove/internal/vmm"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// goldenSpec is a fixed spec: the golden files show its command line.
var goldenSpec = vmm.Spec{
	ID:        "s-golden",
	Dir:       "/var/lib/cove/vms/s-golden",
	Kernel:    "/var/lib/cove/kernels/6.1.0-56-amd64/vmlinux",
	Initrd:    "/var/lib/cove/initramfs/0123456789abcdef.cpio",
	Cmdline:   "cove.test=1",
	Disk:      "/var/lib/cove/vms/s-golden/disk.qcow2",
	MemoryMiB: 512,
	CPUs:      2,
}

// TestArgsGolden pins QEMU's command line, one option a line. A change
// to it is a change to every VM's machine and jail: review the diff, then
// run 'go test ./internal/vmm/qemu -run TestArgsGolden -update'.
func TestArgsGolden(t *testing.T) {
	for _, accel := range []string{"tcg", "kvm"} {
		t.Run(accel, func(t *testing.T) {
			got := render((&Driver{accel: accel}).Args(goldenSpec))
			path := filepath.Join("testdata", "args-"+accel+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("QEMU arguments for %s differ from %s (run with -update if intended):\n%s",
					accel, path, lineDiff(string(want), got))
			}
		})
	}
}

// render writes args one option a line: a flag with its value, or a flag
// alone.
func render(args []string) string {
	var b strings.Builder
	for i := 0; i < len(args); i++ {
		b.WriteString(args[i])
		if strings.HasPrefix(args[i], "-") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			b.WriteString(" " + args[i+1])
			i++
		}
		b.WriteString("\n")
	}
	return b.String()
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "(same lines, another order)"
	}
	return b.String()
}

// value returns the argument after the first occurrence of flag whose
// value starts with prefix ("" for any).
func value(args []string, flag, prefix string) (string, bool) {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && strings.HasPrefix(args[i+1], prefix) {
			return args[i+1], true
		}
	}
	return "", false
}

func opts(v string) []string { return strings.Split(v, ",") }

// The jail's parts must be on every command line, whatever the golden
// files say.
func TestArgsJail(t *testing.T) {
	for _, accel := range []string{"tcg", "kvm"} {
		t.Run(accel, func(t *testing.T) {
			args := (&Driver{accel: accel}).Args(goldenSpec)

			sb, ok := value(args, "-sandbox", "")
			if !ok {
				t.Fatal("no -sandbox: QEMU runs without its seccomp filter")
			}
			for _, o := range []string{"on", "spawn=deny", "elevateprivileges=deny", "obsolete=deny", "resourcecontrol=deny"} {
				if !slices.Contains(opts(sb), o) {
					t.Errorf("-sandbox %s lacks %s", sb, o)
				}
			}
			if opts(sb)[0] != "on" {
				t.Errorf("-sandbox %s: want it to start with on", sb)
			}

			nd, ok := value(args, "-netdev", "user,")
			if !ok || !slices.Contains(opts(nd), "restrict=on") {
				t.Errorf("-netdev %q: want user networking with restrict=on (no way out but the proxy)", nd)
			}
			for _, o := range opts(nd) {
				if strings.HasPrefix(o, "hostfwd") || strings.HasPrefix(o, "guestfwd") || strings.HasPrefix(o, "smb") {
					t.Errorf("-netdev %s opens %s", nd, o)
				}
			}

			for _, banned := range []string{"-virtfs", "-fsdev", "-monitor", "-gdb", "-s", "-vnc", "-spice"} {
				if slices.Contains(args, banned) {
					t.Errorf("%s on the command line: the guest must reach no host file system or debug port", banned)
				}
			}
			for i, a := range args {
				if strings.Contains(a, "vhost-user") || strings.Contains(a, "virtio-9p") || strings.Contains(a, "vfio") {
					t.Errorf("argument %d %q passes a host resource through", i, a)
				}
			}

			mem, ok := value(args, "-object", "memory-backend-file,")
			if !ok {
				t.Fatal("no memory-backend-file: guest RAM cannot be saved by mapping")
			}
			if !slices.Contains(opts(mem), "share=on") || !slices.Contains(opts(mem), "size=512M") ||
				!slices.Contains(opts(mem), "mem-path="+filepath.Join(goldenSpec.Dir, MemFile)) {
				t.Errorf("-object %s: want share=on, size=512M, mem-path in the VM's dir", mem)
			}
			if m, _ := value(args, "-M", "microvm"); !slices.Contains(opts(m), "memory-backend=mem") {
				t.Errorf("-M %s: want memory-backend=mem", m)
			}

			// Every path QEMU opens lies in the VM's directory, or is
			// one of the spec's read-only inputs.
			for _, flag := range []string{"-chardev", "-qmp"} {
				for i := 0; i+1 < len(args); i++ {
					if args[i] != flag {
						continue
					}
					for _, o := range opts(args[i+1]) {
						p, ok := strings.CutPrefix(o, "path=")
						if !ok {
							p, ok = strings.CutPrefix(o, "unix:")
						}
						if ok && filepath.Dir(p) != goldenSpec.Dir {
							t.Errorf("%s %s: %s is outside the VM's directory", flag, args[i+1], p)
						}
					}
				}
			}
			if !slices.Contains(args, "-nodefaults") || !slices.Contains(args, "-no-user-config") {
				t.Error("want -nodefaults and -no-user-config: no devices or config the spec did not ask for")
			}
		})
	}
}

func TestArgsFollowSpec(t *testing.T) {
	args := (&Driver{accel: "kvm"}).Args(goldenSpec)
	for flag, want := range map[string]string{
		"-smp":    "2",
		"-m":      "512M",
		"-kernel": goldenSpec.Kernel,
		"-initrd": goldenSpec.Initrd,
		"-accel":  "kvm",
		"-cpu":    "host",
	} {
		if got, _ := value(args, flag, ""); got != want {
			t.Errorf("%s %q, want %q", flag, got, want)
		}
	}
	if name, _ := value(args, "-name", ""); !strings.HasPrefix(name, "cove-s-golden,") {
		t.Errorf("-name %q: want cove-ID, so leftover processes can be found", name)
	}
	if d, _ := value(args, "-drive", ""); !slices.Contains(opts(d), "file="+goldenSpec.Disk) {
		t.Errorf("-drive %q: want the spec's disk", d)
	}
	app, _ := value(args, "-append", "")
	if !strings.HasSuffix(app, " cove.test=1") {
		t.Errorf("-append %q: want the spec's extra command line last", app)
	}

	tcg := (&Driver{accel: "tcg"}).Args(goldenSpec)
	if a, _ := value(tcg, "-accel", ""); !strings.HasPrefix(a, "tcg") {
		t.Errorf("tcg: -accel %q", a)
	}
	if c, _ := value(tcg, "-cpu", ""); c != "max,erms=off" {
		t.Errorf("tcg: -cpu %q, want max,erms=off (host needs KVM; ERMS makes TCG copy byte by byte)", c)
	}

	s := goldenSpec
	s.Cmdline = ""
	if app, _ := value((&Driver{accel: "kvm"}).Args(s), "-append", ""); strings.HasSuffix(app, " ") {
		t.Errorf("-append %q ends in a space without an extra command line", app)
	}
}

func TestDetectAccel(t *testing.T) {
	if _, _, err := DetectAccel("bogus"); err == nil {
		t.Error(`DetectAccel("bogus"): no error`)
	}
	for _, req := range []string{"tcg", "kvm"} {
		accel, reason, err := DetectAccel(req)
		if err != nil || accel != req || reason == "" {
			t.Errorf("DetectAccel(%q) = %q, %q, %v; want %q with a reason", req, accel, reason, err, req)
		}
	}
	for _, req := range []string{"", "auto"} {
		accel, reason, err := DetectAccel(req)
		if err != nil || (accel != "kvm" && accel != "tcg") || reason == "" {
			t.Errorf("DetectAccel(%q) = %q, %q, %v; want kvm or tcg with a reason", req, accel, reason, err)
		}
	}
}

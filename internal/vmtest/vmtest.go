// Package vmtest gives tests what they need to boot real microVMs: the
// cove-agent binary built from this tree, the guest kernel, the initramfs
// and the images, all built once and cached on disk (keyed by their inputs)
// so that every test binary and every run shares them.
package vmtest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/vmm/qemu"
)

// CacheDir is where tests keep kernels, images and the agent binary.
// COVE_TEST_CACHE overrides it.
func CacheDir() string {
	if d := os.Getenv("COVE_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/tmp/cove-test"
}

// Require skips the test when QEMU is absent, saying so, unless CI is set:
// there a missing QEMU fails the test, since a suite that skips its VMs
// tests nothing.
func Require(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not found and CI is set: run 'make deps' (VM tests never skip in CI)", bin)
			}
			t.Skipf("skipping VM test: %s not found (install qemu-system-x86, qemu-utils, e2fsprogs; 'make deps' does)", bin)
		}
	}
}

var (
	once    sync.Once
	env     *Env
	envErr  error
	imgMu   sync.Mutex
	imgDone = map[string]image.Image{}
)

// Env is the shared, built boot material.
type Env struct {
	Builder *image.Builder
	Kernel  image.Kernel
	Initrd  string
	Agent   string
}

// Get returns the shared Env, building what is missing (the first run on a
// machine fetches the kernel; later runs reuse the cache).
func Get(t testing.TB) *Env {
	t.Helper()
	Require(t)
	once.Do(func() { env, envErr = build() })
	if envErr != nil {
		t.Fatalf("vmtest: %v", envErr)
	}
	return env
}

func build() (*Env, error) {
	dir := CacheDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// QEMU runs as an unprivileged user: it must traverse to the images.
	_ = os.Chmod(dir, 0o755)
	agent, err := BuildAgent(filepath.Join(dir, "bin"))
	if err != nil {
		return nil, err
	}
	b := &image.Builder{Home: dir, AgentPath: agent}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	k, err := b.Kernel(ctx, logProgress)
	if err != nil {
		return nil, err
	}
	initrd, err := b.Initramfs(k)
	if err != nil {
		return nil, err
	}
	return &Env{Builder: b, Kernel: k, Initrd: initrd, Agent: agent}, nil
}

// Image returns the named image, building it on first use.
func (e *Env) Image(t testing.TB, name string) image.Image {
	t.Helper()
	imgMu.Lock()
	defer imgMu.Unlock()
	if im, ok := imgDone[name]; ok {
		return im
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	im, err := e.Builder.BuildImage(ctx, name, logProgress)
	if err != nil {
		t.Fatalf("vmtest: build image %s: %v", name, err)
	}
	imgDone[name] = im
	return im
}

func logProgress(msg string) { slog.Info("vmtest: " + msg) }

// BuildAgent builds a static cove-agent from this tree into dir and
// returns its path.
func BuildAgent(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".cove-agent-")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", tmp.Name(), "./cmd/cove-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build cove-agent: %v: %s", err, out)
	}
	dst := filepath.Join(dir, "cove-agent")
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
}

// BuildCove builds the cove binary from this tree into dir.
func BuildCove(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "cove")
	cmd := exec.Command("go", "build", "-o", dst, "./cmd/cove")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build cove: %v: %s", err, out)
	}
	return dst, nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the cove module")
	}
	return filepath.Dir(mod), nil
}

// Dir returns a fresh directory that an unprivileged QEMU can use: test
// temp dirs are 0700 and owned by root, so VM dirs go under the cache.
func Dir(t testing.TB) string {
	t.Helper()
	base := filepath.Join(CacheDir(), "run")
	if err := os.MkdirAll(base, 0o711); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(base, 0o711)
	d, err := os.MkdirTemp(base, strings.ReplaceAll(t.Name(), "/", "_")+"-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(d, 0o711)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// VMProcs returns the PIDs and command lines of the QEMU processes that
// run a VM under dir: QEMUProcs without the spares no VM has claimed.
func VMProcs(dir string) map[int]string {
	out := map[int]string{}
	for _, p := range qemu.Procs(dir) {
		if !p.Spare {
			out[p.PID] = strings.Join(p.Args, " ")
		}
	}
	return out
}

// QEMUProcs returns the PIDs and command lines of the QEMU processes whose
// command line mentions a path under dir, spares included.
func QEMUProcs(dir string) map[int]string {
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue // gone, or a zombie
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, "qemu-system") && strings.Contains(cmd, dir+"/") {
			out[pid] = cmd
		}
	}
	return out
}

package image

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/agent"
	"github.com/cove-dev/cove/internal/testenv"
)

func TestKeyIsStable(t *testing.T) {
	in := []string{"tiny/v1", "busybox=abc"}
	k := key(in)
	if len(k) != 16 || strings.Trim(k, "0123456789abcdef") != "" {
		t.Fatalf("key %q: want 16 hex digits", k)
	}
	if key([]string{"tiny/v1", "busybox=abc"}) != k {
		t.Fatal("the same inputs gave another key")
	}
	// Pinned: a change of the key function rebuilds every cached image.
	if want := "31dd4d529fa5029c"; k != want {
		t.Fatalf("key %s, want %s", k, want)
	}
}

func TestKeyChangesWithAnyInput(t *testing.T) {
	sets := [][]string{
		nil,
		{""},
		{"", ""},
		{"a"},
		{"b"},
		{"a", "b"},
		{"b", "a"},
		{"ab"},
		{"a", "bc"},
		{"ab", "c"},
		{"a\n1:b"}, // would collide with {"a", "b"} without length prefixes
		{"tiny/v1", "busybox=abc"},
		{"tiny/v1", "busybox=abd"},
		{"tiny/v2", "busybox=abc"},
	}
	seen := map[string][]string{}
	for _, s := range sets {
		k := key(s)
		if prev, ok := seen[k]; ok {
			t.Errorf("inputs %q and %q share key %s", prev, s, k)
		}
		seen[k] = s
	}
}

// needBusybox skips when busybox-static is absent (fails under CI).
func needBusybox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(BusyboxPath); err != nil {
		testenv.Skipf(t, "%s not found (install busybox-static)", BusyboxPath)
	}
}

// needTools skips when a tool of e2fsprogs (mkfs.ext4, debugfs) is absent
// (fails under CI), and returns their paths in order.
func needTools(t *testing.T, tools ...string) []string {
	t.Helper()
	var paths []string
	for _, tool := range tools {
		p, err := exec.LookPath(tool)
		if err != nil {
			testenv.Skipf(t, "%s not found (install e2fsprogs)", tool)
		}
		paths = append(paths, p)
	}
	return paths
}

func TestTinyRecipePopulates(t *testing.T) {
	needBusybox(t)
	dir := t.TempDir()
	var progress []string
	r := tinyRecipe()
	if err := r.Populate(context.Background(), dir, func(s string) { progress = append(progress, s) }); err != nil {
		t.Fatal(err)
	}
	if len(progress) == 0 {
		t.Error("no progress reported")
	}
	bb, err := os.Stat(filepath.Join(dir, "bin/busybox"))
	if err != nil || !bb.Mode().IsRegular() || bb.Mode().Perm() != 0o755 {
		t.Fatalf("bin/busybox: %v, %v; want an executable regular file", bb, err)
	}
	want, _ := os.ReadFile(BusyboxPath)
	if got, _ := os.ReadFile(filepath.Join(dir, "bin/busybox")); !bytes.Equal(got, want) {
		t.Fatal("bin/busybox differs from " + BusyboxPath)
	}
	// The applets the agent's exec and the shell tests rely on.
	for _, applet := range []string{"bin/sh", "bin/cat", "bin/ls", "bin/sleep", "bin/echo"} {
		l, err := os.Readlink(filepath.Join(dir, applet))
		if err != nil || l != "/bin/busybox" {
			t.Errorf("%s: link to %q, %v; want /bin/busybox", applet, l, err)
		}
	}
	links := 0
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type()&os.ModeSymlink != 0 {
			links++
			if l, _ := os.Readlink(p); l != "/bin/busybox" {
				t.Errorf("%s links to %q", p, l)
			}
		}
		return nil
	})
	if links < 100 {
		t.Errorf("%d applet links, want busybox's full list", links)
	}
	for p, want := range map[string]string{"etc/hostname": "cove\n", "etc/cove-image": "tiny\n"} {
		if b, _ := os.ReadFile(filepath.Join(dir, p)); string(b) != want {
			t.Errorf("%s: %q, want %q", p, b, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/passwd")); !strings.HasPrefix(string(b), "root:x:0:0:") {
		t.Errorf("etc/passwd: %q, want root first", b)
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "root", "var/tmp", "usr/bin", "sbin"} {
		if fi, err := os.Stat(filepath.Join(dir, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s: not a directory (%v)", d, err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, "tmp")); fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("tmp: mode %v, want drwxrwxrwt", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(dir, "root")); fi.Mode().Perm() != 0o700 {
		t.Errorf("root: mode %v, want 0700", fi.Mode().Perm())
	}
}

func TestTinyInputsFollowBusybox(t *testing.T) {
	dir := t.TempDir()
	old := BusyboxPath
	t.Cleanup(func() { BusyboxPath = old })
	BusyboxPath = filepath.Join(dir, "busybox")
	os.WriteFile(BusyboxPath, []byte("one"), 0o755)
	a, err := tinyRecipe().Inputs()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(BusyboxPath, []byte("two"), 0o755)
	b, _ := tinyRecipe().Inputs()
	if key(a) == key(b) {
		t.Fatal("a new busybox keeps the tiny image's key")
	}
	os.Remove(BusyboxPath)
	if _, err := tinyRecipe().Inputs(); err == nil || !strings.Contains(err.Error(), "busybox") {
		t.Fatalf("inputs without busybox: %v, want an error naming busybox", err)
	}
}

type cpioEntry struct {
	hdr  cpio.Header
	data []byte
}

func readCPIO(t *testing.T, path string) []cpioEntry {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel reads only the "newc" format.
	if !bytes.HasPrefix(raw, []byte("070701")) {
		t.Fatalf("%s starts with %q, want the newc magic 070701", path, raw[:min(6, len(raw))])
	}
	r := cpio.NewReader(bytes.NewReader(raw))
	var out []cpioEntry
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("read %s: %s: %v", path, h.Name, err)
		}
		out = append(out, cpioEntry{*h, data})
	}
}

func inode(t *testing.T, path string) (uint64, time.Time) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino, fi.ModTime()
}

func TestInitramfs(t *testing.T) {
	home := t.TempDir()
	src := t.TempDir()
	agentPath := filepath.Join(src, "cove-agent")
	agentBin := []byte("\x7fELF a static cove-agent, or so we say")
	os.WriteFile(agentPath, agentBin, 0o755)
	var mods []string
	for _, m := range []struct{ name, deps string }{{"virtio.ko", ""}, {"virtio_blk.ko", "virtio"}, {"virtio-rng.ko", "virtio"}} {
		p := filepath.Join(src, "mods", m.name)
		writeModule(t, p, "depends="+m.deps)
		mods = append(mods, p)
	}
	b := &Builder{Home: home, AgentPath: agentPath}
	k := Kernel{Version: "6.1.0-test-amd64", Vmlinux: "/unused", Modules: mods}

	path, err := b.Initramfs(k)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(path) != filepath.Join(home, "initramfs") || filepath.Ext(path) != ".cpio" {
		t.Errorf("initramfs at %s, want HOME/initramfs/KEY.cpio", path)
	}
	entries := readCPIO(t, path)
	byName := map[string]cpioEntry{}
	for i, e := range entries {
		if parent := filepath.Dir(e.hdr.Name); parent != "." {
			if p, ok := byName[parent]; !ok || !p.hdr.Mode.IsDir() {
				t.Errorf("entry %d %s comes before its directory %s", i, e.hdr.Name, parent)
			}
		}
		byName[e.hdr.Name] = e
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "lib", "lib/cove-modules"} {
		if e, ok := byName[d]; !ok || !e.hdr.Mode.IsDir() {
			t.Errorf("no directory %s", d)
		}
	}
	init, ok := byName["init"]
	if !ok || !init.hdr.Mode.IsRegular() || init.hdr.Mode.Perm() != 0o755 || !bytes.Equal(init.data, agentBin) {
		t.Fatalf("init: %+v, want the agent binary, mode 0755", init.hdr)
	}
	modDir := strings.TrimPrefix(agent.ModulesDir, "/")
	for _, m := range mods {
		e, ok := byName[modDir+"/"+filepath.Base(m)]
		want, _ := os.ReadFile(m)
		if !ok || !e.hdr.Mode.IsRegular() || !bytes.Equal(e.data, want) {
			t.Errorf("module %s missing or altered", filepath.Base(m))
		}
	}
	order, ok := byName[strings.TrimPrefix(agent.ModulesOrder, "/")]
	if want := "virtio.ko\nvirtio_blk.ko\nvirtio-rng.ko\n"; !ok || string(order.data) != want {
		t.Errorf("order file %q, want %q (the kernel's module order)", order.data, want)
	}
	if len(entries) != 6+1+len(mods)+1 {
		t.Errorf("%d entries, want %d: nothing else belongs in the initramfs", len(entries), 6+1+len(mods)+1)
	}

	// The same inputs reuse the file as it is. Its times are set to a
	// date no write leaves, so that a rewrite in place shows too.
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	ino, mtime := inode(t, path)
	again, err := b.Initramfs(k)
	if err != nil {
		t.Fatal(err)
	}
	if again != path {
		t.Fatalf("second call: %s, want %s", again, path)
	}
	if ino2, mtime2 := inode(t, again); ino2 != ino || !mtime2.Equal(mtime) {
		t.Fatal("second call rewrote the initramfs")
	}

	// Any input changes the file.
	k2 := k
	k2.Version = "6.1.0-other-amd64"
	other := map[string]Kernel{"kernel version": k2}
	k3 := k
	k3.Modules = mods[:2]
	other["module list"] = k3
	for what, kk := range other {
		p, err := b.Initramfs(kk)
		if err != nil {
			t.Fatal(err)
		}
		if p == path {
			t.Errorf("a new %s reuses the old initramfs", what)
		}
	}
	os.WriteFile(agentPath, append(agentBin, '!'), 0o755)
	if p, err := b.Initramfs(k); err != nil || p == path {
		t.Errorf("a new agent binary: %s, %v; want a new initramfs", p, err)
	}
	os.Remove(agentPath)
	if _, err := b.Initramfs(k); err == nil {
		t.Error("no agent binary: no error")
	}
}

func TestUnknownImage(t *testing.T) {
	b := &Builder{Home: t.TempDir()}
	ctx := context.Background()
	if _, err := b.BuildImage(ctx, "windows", nil); !api.IsCode(err, api.CodeInvalid) {
		t.Errorf("BuildImage of an unknown name: %v, want code %s", err, api.CodeInvalid)
	} else if !strings.Contains(err.Error(), "tiny") {
		t.Errorf("error %q: want it to list the known images", err)
	}
	if _, err := b.Get(ctx, "windows"); !api.IsCode(err, api.CodeInvalid) {
		t.Errorf("Get of an unknown name: %v, want code %s", err, api.CodeInvalid)
	}
	if _, err := b.Build(ctx, "", nil); !api.IsCode(err, api.CodeInvalid) {
		t.Errorf("Build of an empty name: %v, want code %s", err, api.CodeInvalid)
	}
}

func TestGetUnbuiltImage(t *testing.T) {
	needBusybox(t)
	b := &Builder{Home: t.TempDir()}
	_, err := b.Get(context.Background(), "tiny")
	if !api.IsCode(err, api.CodeNotFound) || !strings.Contains(err.Error(), "cove image build tiny") {
		t.Fatalf("Get before a build: %v, want not_found saying how to build", err)
	}
	list, err := b.List(context.Background())
	if err != nil || len(list) != 0 {
		t.Fatalf("List before a build: %v, %v; want none", list, err)
	}
}

// TestBuildTinyTwiceUsesCache: a second build of the same inputs reuses
// the first one's image and builds nothing. That it builds nothing is seen
// three ways: it says so (no "building" step), the build tools are out of
// its reach (PATH is empty, so mkfs.ext4 could not run), and the root file
// system is the same file, untouched (inode and times).
func TestBuildTinyTwiceUsesCache(t *testing.T) {
	needBusybox(t)
	debugfs := needTools(t, "mkfs.ext4", "debugfs")[1]
	b := &Builder{Home: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var first []string
	im, err := b.BuildImage(ctx, "tiny", func(s string) { first = append(first, s) })
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(first, "\n"), "tiny: building") {
		t.Errorf("first build progress %q: want it to say it builds", first)
	}
	if im.Name != "tiny" || im.Key == "" || im.SizeBytes <= 0 || im.CreatedAt.IsZero() {
		t.Errorf("manifest %+v", im.Manifest)
	}
	if want := filepath.Join(b.Home, "images", "tiny", im.Key, "rootfs.raw"); im.RootFS != want {
		t.Errorf("rootfs at %s, want %s", im.RootFS, want)
	}
	fi, err := os.Stat(im.RootFS)
	if err != nil || fi.Mode().Perm() != 0o444 {
		t.Fatalf("rootfs: %v, %v; want a read-only file", fi, err)
	}
	if fi.Size() != 256<<20 {
		t.Errorf("rootfs is %d bytes, want the recipe's 256 MiB", fi.Size())
	}
	// Times no build leaves (the file is read-only: root sets them).
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	if err := os.Chtimes(im.RootFS, old, old); err != nil {
		t.Fatal(err)
	}
	ino, mtime := inode(t, im.RootFS)

	var second []string
	t.Setenv("PATH", "")
	im2, err := b.BuildImage(ctx, "tiny", func(s string) { second = append(second, s) })
	if err != nil {
		t.Fatalf("second build, with no build tools in reach: %v (it must not build)", err)
	}
	if len(second) != 1 || !strings.Contains(second[0], "cached") {
		t.Errorf("second build progress %q: want one line saying cached", second)
	}
	if im2.RootFS != im.RootFS || im2.Key != im.Key || !im2.CreatedAt.Equal(im.CreatedAt) {
		t.Errorf("second build: %+v, want the first one's image", im2)
	}
	if ino2, mtime2 := inode(t, im2.RootFS); ino2 != ino || !mtime2.Equal(mtime) {
		t.Errorf("second build replaced or rewrote the root file system (inode %d → %d, mtime %s → %s)", ino, ino2, mtime, mtime2)
	}

	// Get and List see it; no build leftovers remain.
	if got, err := b.Get(ctx, "tiny"); err != nil || got.RootFS != im.RootFS {
		t.Errorf("Get: %+v, %v", got, err)
	}
	if list, err := b.List(ctx); err != nil || len(list) != 1 || list[0].Key != im.Key {
		t.Errorf("List: %+v, %v", list, err)
	}
	ents, _ := os.ReadDir(filepath.Join(b.Home, "images", "tiny"))
	if len(ents) != 1 || ents[0].Name() != im.Key {
		t.Errorf("images/tiny holds %v, want only %s", ents, im.Key)
	}

	// The file system holds what Populate made (debugfs reads ext4
	// without mounting; it comes with mkfs.ext4 in e2fsprogs).
	out, err := exec.Command(debugfs, "-R", "stat /tmp", im.RootFS).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Mode:  01777") {
		t.Errorf("debugfs stat /tmp: %v: %s; want mode 01777", err, out)
	}
	out, err = exec.Command(debugfs, "-R", "cat /etc/cove-image", im.RootFS).Output()
	if err != nil || string(out) != "tiny\n" {
		t.Errorf("debugfs cat /etc/cove-image: %v: %q, want \"tiny\\n\"", err, out)
	}
}

// Two builders on one data dir (two processes, say) build an image once.
func TestConcurrentBuildersBuildOnce(t *testing.T) {
	needBusybox(t)
	needTools(t, "mkfs.ext4")
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var mu sync.Mutex
	builds := 0
	keys := map[string]bool{}
	var wg sync.WaitGroup
	for _, b := range []*Builder{{Home: home}, {Home: home}, {Home: home}} {
		for range 2 {
			wg.Go(func() {
				im, err := b.BuildImage(ctx, "tiny", func(s string) {
					if strings.Contains(s, "tiny: building") {
						mu.Lock()
						builds++
						mu.Unlock()
					}
				})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
				keys[im.Key] = true
			})
		}
	}
	wg.Wait()
	if builds != 1 || len(keys) != 1 {
		t.Fatalf("%d builds, %d keys; want one build that all callers share", builds, len(keys))
	}
}

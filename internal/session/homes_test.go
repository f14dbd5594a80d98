package session_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/image"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/session"
	"github.com/cove-dev/cove/internal/store"
	"github.com/cove-dev/cove/internal/store/sqlite"
	"github.com/cove-dev/cove/internal/vmm/fake"
)

// homeImages is the image builder of one node's home over the fake
// driver, laid out as cove's: image "tiny" (key k1) at
// HOME/images/tiny/k1/rootfs.raw, the kernel at HOME/kernels/fake/vmlinux
// and the initramfs at HOME/initramfs/fake.cpio. It keeps the image in
// the object store as image.Builder does (session.ImageStore), refusing,
// as it does, a root file system that is not under its own home.
type homeImages struct {
	home string
	cas  *cas.Store
}

const homeRootFS = "tiny/k1/rootfs.raw"

// newHomeImages lays out what a node's start makes in home: its kernel,
// initramfs and default image.
func newHomeImages(t *testing.T, home string, cs *cas.Store) homeImages {
	t.Helper()
	files := map[string][]byte{
		"kernels/fake/vmlinux":      nil,
		"initramfs/fake.cpio":       nil,
		"images/" + homeRootFS:      bytes.Repeat([]byte("root file system\n"), 4096),
		"images/tiny/k1/build.note": []byte("built here\n"),
	}
	for name, b := range files {
		p := filepath.Join(home, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return homeImages{home: home, cas: cs}
}

func (h homeImages) images() string { return filepath.Join(h.home, "images") }

func (h homeImages) Get(_ context.Context, name string) (image.Image, error) {
	if name != "tiny" {
		return image.Image{}, api.Errorf(api.CodeInvalid, "unknown image %q (known: tiny)", name)
	}
	return image.Image{Manifest: image.Manifest{Name: name}, RootFS: filepath.Join(h.images(), homeRootFS)}, nil
}

func (h homeImages) Kernel(context.Context, func(string)) (image.Kernel, error) {
	return image.Kernel{Version: "fake", Vmlinux: filepath.Join(h.home, "kernels", "fake", "vmlinux")}, nil
}

func (h homeImages) Initramfs(image.Kernel) (string, error) {
	return filepath.Join(h.home, "initramfs", "fake.cpio"), nil
}

func (h homeImages) Store(ctx context.Context, rootFS string) (string, error) {
	if rootFS != filepath.Join(h.images(), homeRootFS) {
		return "", fmt.Errorf("image: %s is not an image's root file system under %s", rootFS, h.images())
	}
	m, _, err := h.cas.UploadWith(ctx, []cas.Source{{Name: homeRootFS, Path: rootFS}}, cas.UploadOptions{})
	return m.ID, err
}

func (h homeImages) Missing(m cas.Manifest) bool {
	for _, f := range m.Files {
		if _, err := os.Stat(filepath.Join(h.images(), filepath.FromSlash(f.Name))); err != nil {
			return true
		}
	}
	return false
}

func (h homeImages) Fetch(ctx context.Context, m cas.Manifest, progress func(cas.Progress)) (cas.RestoreStats, error) {
	if err := os.MkdirAll(filepath.Join(h.images(), "tiny", "k1"), 0o755); err != nil {
		return cas.RestoreStats{}, err
	}
	return h.cas.Restore(ctx, m, h.images(), cas.RestoreOptions{Progress: progress})
}

var _ session.ImageStore = homeImages{}

// homesRig is two nodes, "host-a" and "host-b", each a manager with a
// home of its own (its sessions, templates, images and kernel under it),
// over one store, one object store and one fake driver.
type homesRig struct {
	t      *testing.T
	st     *sqlite.Store
	cas    *cas.Store
	driver *fake.Driver
	homes  map[string]string // node name: home
	ids    map[string]string // node name: node id
	mgrs   map[string]*session.Manager
}

func newHomesRig(t *testing.T) *homesRig {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := objstore.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cs, err := cas.New(cas.Config{Objects: objs})
	if err != nil {
		t.Fatal(err)
	}
	hr := &homesRig{t: t, st: st, cas: cs, driver: fake.New(), homes: map[string]string{}, ids: map[string]string{}, mgrs: map[string]*session.Manager{}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, m := range hr.mgrs {
			if ss, err := m.List(ctx); err == nil {
				for _, s := range ss {
					if s.Node == hr.ids[hr.nameOf(m)] {
						if err := m.Delete(ctx, s.ID); err != nil {
							t.Errorf("cleanup: delete %s: %v", s.ID, err)
						}
					}
				}
			}
		}
		for _, m := range hr.mgrs {
			m.StopAll(ctx)
		}
		if ids := hr.driver.Running(); len(ids) != 0 {
			t.Errorf("fake VMs left running: %v", ids)
		}
		st.Close()
	})
	return hr
}

func (hr *homesRig) nameOf(m *session.Manager) string {
	for name, x := range hr.mgrs {
		if x == m {
			return name
		}
	}
	return ""
}

// open starts node name's server on a fresh home (a new host, or one
// that lost its disk) and returns its manager.
func (hr *homesRig) open(name string) *session.Manager {
	t := hr.t
	t.Helper()
	ctx := context.Background()
	home := filepath.Join(t.TempDir(), "home-"+name)
	images := newHomeImages(t, home, hr.cas)
	n, err := session.RegisterEmbeddedNode(ctx, hr.st, name, fakeCapacity)
	if err != nil {
		t.Fatal(err)
	}
	m, err := session.New(session.Config{Store: hr.st, Driver: hr.driver, Images: images,
		Dir: filepath.Join(home, "sessions"), TemplateDir: filepath.Join(home, "templates"),
		DefaultMemoryMiB: 64, Objects: hr.cas, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Node: n.ID, NodeGrace: time.Hour,
		NodeProbe: func(context.Context) (store.NodeCapacity, error) { return fakeCapacity, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	// kill backdates a lost host's heartbeat: the others have seen the
	// store all along.
	m.StoreSeenSince(time.Now().Add(-24 * time.Hour))
	hr.homes[name], hr.ids[name], hr.mgrs[name] = home, n.ID, m
	return m
}

// view is a fake rig over node name's manager, for its helpers.
func (hr *homesRig) view(name string) *objectsRig {
	return &objectsRig{fakeRig: &fakeRig{t: hr.t, driver: hr.driver, mgr: hr.mgrs[name], store: hr.st}, cas: hr.cas}
}

// kill plays the loss of node name's host: its server stops, its VMs
// die, its disk is gone, and its heartbeat is older than the grace.
func (hr *homesRig) kill(name string) {
	t := hr.t
	t.Helper()
	m := hr.mgrs[name]
	ctx := context.Background()
	ss, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	delete(hr.mgrs, name)
	for _, s := range ss {
		if vm := hr.driver.Find(s.ID); vm != nil && s.Node == hr.ids[name] {
			vm.Kill()
		}
	}
	if err := os.RemoveAll(hr.homes[name]); err != nil {
		t.Fatal(err)
	}
	old := time.Now().UTC().Add(-2 * time.Hour)
	if err := hr.st.HeartbeatNode(ctx, hr.ids[name], old, fakeCapacity); err != nil {
		t.Fatal(err)
	}
}

// wakeOn wakes session id through node name's server and checks it runs
// there with its guest's file intact.
func (hr *homesRig) wakeOn(name, id, file string) {
	t := hr.t
	t.Helper()
	s, err := hr.mgrs[name].Wake(context.Background(), id)
	if err != nil {
		t.Fatalf("wake %s on %s: %v", id, name, err)
	}
	if s.State != api.StateRunning || s.Node != hr.ids[name] {
		t.Fatalf("woken: %+v; want running on %s (%s)", s, name, hr.ids[name])
	}
	hr.view(name).wantFile(id, "/root/f", file)
}

// A session moves between nodes whose --home differ: made on A (one
// booted from an image, one cloned from a template built on A), parked
// and stored; A's host is lost; both wake on B from the object store
// and run; they park and are stored again on B (resting on B's image and
// template version files, which B restored); A comes back as a fresh
// host and B is drained: both wake back on A, and after A's drain on B
// again. A template built on the lost host clones on B too.
func TestFakeNodesOfOtherHomes(t *testing.T) {
	t.Parallel()
	hr := newHomesRig(t)
	ctx := context.Background()
	a := hr.open("host-a")
	b := hr.open("host-b")
	va := hr.view("host-a")

	booted := va.create(api.CreateSessionRequest{})
	va.write(booted.ID, "/root/f", "booted on A\n")
	if _, err := a.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "tp", Setup: []string{"touch /root/setup"}}); err != nil {
		t.Fatalf("template on A: %v", err)
	}
	cloned := va.create(api.CreateSessionRequest{Template: "tp"})
	va.write(cloned.ID, "/root/f", "cloned on A\n")
	for _, id := range []string{booted.ID, cloned.ID} {
		if s := va.get(id); s.Node != hr.ids["host-a"] {
			t.Fatalf("session %s on node %s, want host-a", id, s.Node)
		}
		va.park(id)
		va.waitStored(id)
	}

	// A's host is lost, its home with it.
	hr.kill("host-a")
	if dead := b.SweepNodes(ctx); len(dead) != 1 || dead[0] != hr.ids["host-a"] {
		t.Fatalf("swept %v, want host-a", dead)
	}
	vb := hr.view("host-b")
	hr.wakeOn("host-b", booted.ID, "booted on A\n")
	hr.wakeOn("host-b", cloned.ID, "cloned on A\n")
	// The template built on A clones on B.
	fresh := vb.create(api.CreateSessionRequest{Template: "tp"})
	vb.wantFile(fresh.ID, "/root/setup", "")
	if err := b.Delete(ctx, fresh.ID); err != nil {
		t.Fatal(err)
	}

	// Parked and stored again on B: they rest on B's files now.
	for _, id := range []string{booted.ID, cloned.ID} {
		vb.write(id, "/root/f", "moved to B\n")
		vb.park(id)
		if s := vb.waitStored(id); s.Error != "" {
			t.Errorf("session %s stored on B with error %q", id, s.Error)
		}
	}

	// A comes back on a fresh disk; B is drained: they wake back on A.
	hr.open("host-a")
	if _, err := b.DrainNode(ctx, hr.ids["host-b"]); err != nil {
		t.Fatalf("drain B: %v", err)
	}
	for _, id := range []string{booted.ID, cloned.ID} {
		hr.wakeOn("host-a", id, "moved to B\n")
	}
	// A is drained in turn: they move to B again, where the files of
	// their first stay there (B keeps them until its drain's clean-up)
	// are not taken for their snapshot.
	va = hr.view("host-a")
	for _, id := range []string{booted.ID, cloned.ID} {
		va.write(id, "/root/f", "back on A\n")
	}
	if _, err := b.UncordonNode(ctx, "host-b"); err != nil {
		t.Fatal(err)
	}
	if _, err := hr.mgrs["host-a"].DrainNode(ctx, hr.ids["host-a"]); err != nil {
		t.Fatalf("drain A: %v", err)
	}
	for _, id := range []string{booted.ID, cloned.ID} {
		va.waitStored(id)
		hr.wakeOn("host-b", id, "back on A\n")
	}
}

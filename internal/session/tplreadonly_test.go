package session_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cove-dev/cove/api"
)

// templateFiles returns the files of template name's version v (RAM
// file, device state, disk; not the clone files made ahead), each with
// its mode and content's hash.
func (r *fakeRig) templateFiles(name string, v int) map[string]string {
	r.t.Helper()
	dir := filepath.Join(r.dir, "templates", name, fmt.Sprintf("v%d", v))
	ents, err := os.ReadDir(dir)
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p)
		if err != nil {
			r.t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			r.t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			r.t.Fatal(err)
		}
		out[e.Name()] = fmt.Sprintf("%04o %x", fi.Mode().Perm(), h.Sum(nil)[:8])
		if fi.Mode().Perm()&0o222 != 0 {
			r.t.Errorf("template %s v%d: %s has mode %04o: writable", name, v, e.Name(), fi.Mode().Perm())
		}
	}
	if len(out) < 3 {
		r.t.Fatalf("template %s v%d holds %v; want its RAM file, state and disk", name, v, out)
	}
	return out
}

// TestFakeTemplateFilesStayReadOnly: a template version's files (RAM
// file, device state, disk) are read-only once it is saved, for a
// template built from an image, one rebuilt, and one made from a
// checkpoint; clones that write, park, wake and go leave them as they
// were, byte for byte.
func TestFakeTemplateFilesStayReadOnly(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t)
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}}); err != nil {
		t.Fatal(err)
	}
	src := r.create(api.CreateSessionRequest{})
	r.write(src.ID, "/root/f", "checkpointed\n")
	r.checkpoint(src.ID, "c")
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "ck", FromCheckpoint: src.ID + ":c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.mgr.RebuildTemplate(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	r.eventually("the rebuild makes version 2", func() bool {
		tp, err := r.mgr.GetTemplate(ctx, "web")
		return err == nil && tp.Version == 2
	})
	before := map[string]map[string]string{"web": r.templateFiles("web", 2), "ck": r.templateFiles("ck", 1)}
	for _, name := range []string{"web", "ck"} {
		for range 2 {
			s := r.create(api.CreateSessionRequest{Template: name})
			r.write(s.ID, "/root/mine", s.ID)
			r.write(s.ID, "/root/f", "changed by a clone\n")
			r.park(s.ID)
			r.wantFile(s.ID, "/root/mine", s.ID)
			if err := r.mgr.Delete(ctx, s.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, want := range before {
		v := 1
		if name == "web" {
			v = 2
		}
		if got := r.templateFiles(name, v); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("template %s's files after its clones: %v, want %v", name, got, want)
		}
	}
}

// TestFakeRestoredTemplateFilesReadOnly: a template version's files that
// a wake restores from the object store (the host lost them) are
// read-only too, as the version's own were.
func TestFakeRestoredTemplateFilesReadOnly(t *testing.T) {
	t.Parallel()
	r := newChainRig(t)
	ctx := context.Background()
	if _, err := r.mgr.CreateTemplate(ctx, testOwner, api.CreateTemplateRequest{Name: "web", Setup: []string{"touch /root/setup-ran"}}); err != nil {
		t.Fatal(err)
	}
	r.versionManifest("web") // stored
	want := r.templateFiles("web", 1)
	s := r.create(api.CreateSessionRequest{Template: "web"})
	r.write(s.ID, "/root/f", "clone's own\n")
	r.park(s.ID)
	r.waitStored(s.ID)
	for _, d := range []string{filepath.Join(r.dir, s.ID), filepath.Join(r.dir, "templates", "web", "v1")} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	r.wantFile(s.ID, "/root/f", "clone's own\n") // the wake restores both
	if got := r.templateFiles("web", 1); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the restored version's files: %v, want %v", got, want)
	}
}

package cas_test

import (
	"context"
	"log/slog"
	"time"

	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
)

// How park, wake and GC use a Store: the shape of the wiring to come in
// the session layer (paths and IDs here are examples).
func Example() {
	ctx := context.Background()
	objs, err := objstore.Open(ctx, "file:///var/lib/cove/objects") // or s3://bucket/prefix?endpoint=…
	if err != nil {
		slog.Error("objects", "err", err)
		return
	}
	store, err := cas.New(cas.Config{Objects: objs})
	if err != nil {
		return
	}

	// After a park, in the background: the session's files; the
	// manifest ID goes into the session's record ("stored: true").
	m, st, err := store.Upload(ctx, []cas.Source{
		{Name: "mem", Path: "/var/lib/cove/sessions/s-1/mem"},
		{Name: "state", Path: "/var/lib/cove/sessions/s-1/state"},
		{Name: "disk.qcow2", Path: "/var/lib/cove/sessions/s-1/disk.qcow2"},
	}, func(p cas.Progress) { slog.Debug("upload", "done", p.Done, "total", p.Total) })
	if err != nil {
		return // no manifest was written; a later Upload reuses the chunks stored
	}
	slog.Info("stored", "manifest", m.ID, "bytes_added", st.BytesAdded)

	// A wake whose local files were evicted: the template version's
	// files, still on this host, seed the restore.
	snap, err := store.LoadManifest(ctx, m.ID)
	if err != nil {
		return
	}
	tmpl, err := store.LoadManifest(ctx, "…the template version's manifest ID…")
	if err != nil {
		return
	}
	if _, err := store.Restore(ctx, snap, "/var/lib/cove/sessions/s-1", cas.RestoreOptions{
		Seeds: []cas.Seed{{Manifest: tmpl, Dir: "/var/lib/cove/templates/tiny/v1"}},
	}); err != nil {
		return // a missing or corrupt chunk: the error names it; nothing was put in place
	}

	// Now and then: every manifest a record names is live.
	if _, err := store.GC(ctx, []string{m.ID, tmpl.ID}, 48*time.Hour); err != nil {
		return
	}
}

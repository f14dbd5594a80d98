package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
	"github.com/cove-dev/cove/internal/session"
)

// minGCGrace is the shortest --gc-grace: half of it must outlast the
// longest upload.
const minGCGrace = time.Hour

// openObjects opens the object store that --objects names, where parked
// sessions' snapshots go off the host: "" for the directory objects in
// home (file://), else a file:///dir or s3://bucket/prefix?endpoint=…
// URL (credentials from AWS_* or the shared credentials file, never the
// URL). A store that cannot be reached, or a bucket or credentials that
// do not work, stop the server with objstore's reason, which names the
// endpoint and bucket. Its GC grace is the default.
func openObjects(ctx context.Context, url, home string, log *slog.Logger) (*cas.Store, error) {
	return openObjectStore(ctx, url, home, session.DefaultGCGrace, log)
}

// openObjectStore is openObjects for a GC grace period: the store
// refreshes a reused chunk once it is half that old, which leaves half
// the grace for the longest upload (see cas.Store.GC).
func openObjectStore(ctx context.Context, url, home string, grace time.Duration, log *slog.Logger) (*cas.Store, error) {
	if grace < minGCGrace {
		return nil, fmt.Errorf("server: --gc-grace %s: want at least %s (uploads reuse a stored chunk for half of it)", grace, minGCGrace)
	}
	if url == "" {
		url = "file://" + filepath.Join(home, "objects")
	}
	objs, err := objstore.Open(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("server: --objects: %w", err)
	}
	st, err := cas.New(cas.Config{Objects: objs, Log: log, RefreshAfter: grace / 2})
	if err != nil {
		return nil, fmt.Errorf("server: --objects %s: %w", objs, err)
	}
	log.Info("object store: snapshots of parked sessions go there", "objects", objs.String())
	return st, nil
}

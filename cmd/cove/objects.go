package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/cove-dev/cove/internal/cas"
	"github.com/cove-dev/cove/internal/objstore"
)

// openObjects opens the object store that --objects names, where parked
// sessions' snapshots go off the host: "" for the directory objects in
// home (file://), else a file:///dir or s3://bucket/prefix?endpoint=…
// URL (credentials from AWS_* or the shared credentials file, never the
// URL). A store that cannot be reached, or a bucket or credentials that
// do not work, stop the server with objstore's reason, which names the
// endpoint and bucket.
func openObjects(ctx context.Context, url, home string, log *slog.Logger) (*cas.Store, error) {
	if url == "" {
		url = "file://" + filepath.Join(home, "objects")
	}
	objs, err := objstore.Open(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("server: --objects: %w", err)
	}
	st, err := cas.New(cas.Config{Objects: objs, Log: log})
	if err != nil {
		return nil, fmt.Errorf("server: --objects %s: %w", objs, err)
	}
	log.Info("object store: snapshots of parked sessions go there", "objects", objs.String())
	return st, nil
}

package dashboard

import (
	"embed"
	"io/fs"
)

// dist holds what 'make build' puts in internal/dashboard/dist (git
// ignores it): index.html, app.js (the page's script and xterm.js,
// bundled by esbuild), app.css and xterm.css. A checkout where it was
// not built has only the committed NOT-BUILT.txt there: go build still
// works, and the page says to run make build (Built is false).
//
//go:embed dist
var dist embed.FS

// NotBuilt is the page served by a binary built without the assets.
const NotBuilt = "cove's dashboard was not built into this binary: run 'make build' (it needs node and npm: 'make deps')"

// Embedded returns the assets embedded in the binary.
func Embedded() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // "dist" is a valid path
	}
	return sub
}

// Built reports whether assets holds the built dashboard.
func Built(assets fs.FS) bool {
	for _, name := range []string{"index.html", "app.js", "app.css", "xterm.css"} {
		if _, err := fs.Stat(assets, name); err != nil {
			return false
		}
	}
	return true
}

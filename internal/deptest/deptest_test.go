package deptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pkg is the part of 'go list -json' these tests read.
type pkg struct {
	Dir            string
	ImportPath     string
	Name           string
	Standard       bool
	GoFiles        []string
	CgoFiles       []string
	IgnoredGoFiles []string
}

// goCmd runs the go command at the module root with extra environment.
func goCmd(t *testing.T, env []string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = moduleRoot(t)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "env", "GOMOD")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		t.Fatal("not inside the cove module")
	}
	return filepath.Dir(mod)
}

// list runs 'go list -json' and decodes the packages. The guest agent is
// built with CGO_ENABLED=0 for linux, so its dependencies are listed so.
func list(t *testing.T, args ...string) []pkg {
	t.Helper()
	out := goCmd(t, []string{"CGO_ENABLED=0", "GOOS=linux"}, append([]string{"list", "-json"}, args...)...)
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			return pkgs
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
}

// Every package, commands included, has exactly one doc comment, and it
// opens the way go doc expects: "Package NAME ..." or "Command NAME ...".
func TestEveryPackageHasOneDocComment(t *testing.T) {
	pkgs := list(t, "./...")
	if len(pkgs) < 5 {
		t.Fatalf("go list ./... found %d packages; is the module root right?", len(pkgs))
	}
	for _, p := range pkgs {
		var docs []string
		files := append(append(append([]string(nil), p.GoFiles...), p.CgoFiles...), p.IgnoredGoFiles...)
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, name), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if f.Name.Name != p.Name {
				continue // an ignored file of another package (a generator, say)
			}
			if f.Doc != nil {
				docs = append(docs, name)
				text := f.Doc.Text()
				want := "Package " + p.Name + " "
				if p.Name == "main" {
					want = "Command " + filepath.Base(p.Dir) + " "
				}
				if !strings.HasPrefix(text, want) {
					t.Errorf("%s: %s: doc comment starts %q, want %q", p.ImportPath, name, firstLine(text), want+"…")
				}
			}
		}
		switch len(docs) {
		case 0:
			t.Errorf("%s: no package doc comment (add one above the package clause of its main file)", p.ImportPath)
		case 1:
		default:
			t.Errorf("%s: %d package doc comments (%s); keep one", p.ImportPath, len(docs), strings.Join(docs, ", "))
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// The guest agent runs in every VM as PID 1: it stays small and carries
// no server, store, metrics or CLI code. Each entry says why it is banned.
var agentBanned = []struct{ prefix, why string }{
	{"net/http", "the guest serves the host over virtio-serial, not HTTP"},
	{"modernc.org/sqlite", "the state store lives on the host"},
	{"github.com/jackc/pgx/", "the state store lives on the host"},
	{"github.com/prometheus/", "metrics are the server's"},
	{"github.com/spf13/cobra", "the CLI is the host's"},
	{"github.com/coder/websocket", "WebSockets end at the API server"},
	{"github.com/cove-dev/cove/api", "the public API is the server's (and pulls in net/http)"},
	{"github.com/cove-dev/cove/internal/apiserver", "server code"},
	{"github.com/cove-dev/cove/internal/session", "server code"},
	{"github.com/cove-dev/cove/internal/store", "server code"},
	{"github.com/cove-dev/cove/internal/qmp", "host-side VMM control"},
	{"github.com/cove-dev/cove/internal/vmm", "host-side VMM control"},
	{"github.com/cove-dev/cove/internal/image", "host-side image building"},
	{"github.com/cove-dev/cove/internal/secret", "a secret's value is only ever opened on the host, for the egress proxy"},
	{"github.com/cove-dev/cove/internal/objstore", "snapshots reach the object store from the host"},
	{"github.com/cove-dev/cove/internal/cas", "snapshots reach the object store from the host"},
	{"github.com/minio/", "the S3 client is the host's"},
}

func TestAgentHasNoServerDependencies(t *testing.T) {
	deps := goCmd(t, []string{"CGO_ENABLED=0", "GOOS=linux"}, "list", "-deps", "./cmd/cove-agent")
	lines := strings.Fields(string(deps))
	if len(lines) < 10 {
		t.Fatalf("go list -deps ./cmd/cove-agent listed %d packages", len(lines))
	}
	seen := map[string]bool{}
	for _, d := range lines {
		seen[d] = true
		for _, b := range agentBanned {
			if d == b.prefix || strings.HasPrefix(d, strings.TrimSuffix(b.prefix, "/")+"/") {
				t.Errorf("cmd/cove-agent depends on %s: %s (find the import with 'go list -deps -f \"{{.ImportPath}}: {{.Imports}}\" ./cmd/cove-agent')", d, b.why)
			}
		}
	}
	// The test looks at the right list.
	for _, want := range []string{"github.com/cove-dev/cove/internal/agent", "github.com/cove-dev/cove/internal/agentproto"} {
		if !seen[want] {
			t.Errorf("cmd/cove-agent does not depend on %s: is this the agent?", want)
		}
	}
}

// agentproto is shared by host and guest: the standard library and the
// stream multiplexer only.
func TestAgentprotoDependsOnStdlibAndMuxOnly(t *testing.T) {
	for _, p := range list(t, "-deps", "./internal/agentproto") {
		switch {
		case p.Standard,
			p.ImportPath == "github.com/cove-dev/cove/internal/agentproto",
			strings.HasPrefix(p.ImportPath, "github.com/hashicorp/yamux"):
		default:
			t.Errorf("internal/agentproto depends on %s: the protocol package takes the standard library and yamux only", p.ImportPath)
		}
	}
}

// api is imported by outside programs: it reaches nothing inside cove.
func TestAPIDependsOnNothingInternal(t *testing.T) {
	for _, p := range list(t, "-deps", "./api") {
		if strings.HasPrefix(p.ImportPath, "github.com/cove-dev/cove/") && p.ImportPath != "github.com/cove-dev/cove/api" {
			t.Errorf("api depends on %s", p.ImportPath)
		}
	}
}

// A package is named for what it provides: no grab-bags.
func TestNoGrabBagPackages(t *testing.T) {
	banned := map[string]bool{"util": true, "utils": true, "helpers": true, "helper": true, "common": true, "misc": true}
	for _, p := range list(t, "./...") {
		if banned[p.Name] || banned[filepath.Base(p.ImportPath)] {
			t.Errorf("%s (package %s): name a package for the one thing it provides", p.ImportPath, p.Name)
		}
		if strings.Contains(p.ImportPath+"/", "/pkg/") {
			t.Errorf("%s: no pkg/ directories; internal/ or the top level says it", p.ImportPath)
		}
	}
}

// One module: a second go.mod splits the repository's rules and versions.
func TestOneGoMod(t *testing.T) {
	root := moduleRoot(t)
	var mods []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && p != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && d.Name() == "go.mod" {
			rel, _ := filepath.Rel(root, p)
			mods = append(mods, rel)
		}
		return nil
	})
	if len(mods) != 1 || mods[0] != "go.mod" {
		t.Fatalf("go.mod files: %v, want only the root one", mods)
	}
}

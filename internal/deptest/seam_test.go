package deptest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The session layer (internal/session) and the API server
// (internal/apiserver) reach VMs only through package vmm's interfaces: the
// node's driver owns the VMM processes, the disk files' format and the
// tools that make them. So neither depends, even through another package,
// on the QEMU driver or what only it uses; neither runs qemu-img; neither
// sends a signal to a process (the VMMs' are the driver's to end).
var seamBanned = []struct{ path, why string }{
	{"github.com/cove-dev/cove/internal/vmm/qemu", "the QEMU driver is the node's: use the vmm.Driver the manager is given"},
	{"github.com/cove-dev/cove/internal/vmm/qcow2", "disk files are made by the driver: use vmm.Driver.Disks"},
	{"github.com/cove-dev/cove/internal/qmp", "QMP is the QEMU driver's"},
}

// seamPackages are the packages on the API side of the seam; vmm/remote
// is the server's end of a remote node's driver, which the session layer
// takes as it takes a local one, so it holds to the same rule.
var seamPackages = []string{"./internal/session", "./internal/apiserver", "./internal/vmm/remote"}

// signalFuncs are the calls that signal or find a process by PID.
var signalFuncs = map[string]map[string]bool{
	"syscall":               {"Kill": true, "Tgkill": true},
	"golang.org/x/sys/unix": {"Kill": true, "Tgkill": true, "PidfdSendSignal": true, "PidfdOpen": true},
	"os":                    {"FindProcess": true},
}

func TestSessionLayerReachesVMsThroughTheDriverOnly(t *testing.T) {
	for _, root := range seamPackages {
		deps := list(t, "-deps", root)
		if len(deps) < 10 {
			t.Fatalf("go list -deps %s listed %d packages", root, len(deps))
		}
		seen := false
		for _, p := range deps {
			if p.ImportPath == "github.com/cove-dev/cove/internal/vmm" {
				seen = true
			}
			for _, b := range seamBanned {
				if p.ImportPath == b.path {
					t.Errorf("%s depends on %s: %s (find the import with 'go list -deps -f \"{{.ImportPath}}: {{.Imports}}\" %s')", root, b.path, b.why, root)
				}
			}
		}
		// The test looks at the right list.
		if root == "./internal/session" && !seen {
			t.Errorf("%s does not depend on internal/vmm: is this the session layer?", root)
		}
	}
	for _, p := range list(t, seamPackages...) {
		if len(p.GoFiles) == 0 {
			t.Fatalf("%s: no Go files listed", p.ImportPath)
		}
		for _, name := range append(append([]string(nil), p.GoFiles...), p.CgoFiles...) {
			path := filepath.Join(p.Dir, name)
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(src), "qemu-img") {
				t.Errorf("%s/%s names qemu-img: disk files are the driver's to make (vmm.Driver.Disks)", p.ImportPath, name)
			}
			for _, call := range signalCalls(t, path, src) {
				t.Errorf("%s/%s: %s: the VMM processes are the driver's to end (vmm.Driver.KillVMs, VM.Stop)", p.ImportPath, name, call)
			}
		}
	}
}

// signalCalls returns where the Go file at path (holding src) refers to a
// function of signalFuncs, as "line N: pkg.Func".
func signalCalls(t *testing.T, path string, src []byte) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{} // local name → import path, for the packages of signalFuncs
	for _, imp := range f.Imports {
		ip, _ := strconv.Unquote(imp.Path.Value)
		if signalFuncs[ip] == nil {
			continue
		}
		local := ip[strings.LastIndex(ip, "/")+1:]
		if imp.Name != nil {
			local = imp.Name.Name
		}
		names[local] = ip
	}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		x, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		if ip, ok := names[x.Name]; ok && signalFuncs[ip][sel.Sel.Name] {
			out = append(out, "line "+strconv.Itoa(fset.Position(sel.Pos()).Line)+": "+x.Name+"."+sel.Sel.Name)
		}
		return true
	})
	return out
}

// Package sdktest holds the official E2B SDK's scripts that drive cove's
// E2B-compatible API: sdk.mjs and restart.mjs, which cmd/cove's
// TestE2BSDK runs, and bench.mjs, which covebench -only e2b runs. The SDK itself (npm e2b,
// pinned by package-lock.json) is installed once per lock file with npm
// ci under a cache directory, and each run gets a directory holding the
// scripts beside a link to it, where Node resolves 'e2b'.
package sdktest

import (
	"crypto/sha256"
	_ "embed" // the scripts and the lock file
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

var (
	//go:embed package.json
	packageJSON []byte
	//go:embed package-lock.json
	packageLock []byte
	//go:embed sdk.mjs
	sdkScript []byte
	//go:embed bench.mjs
	benchScript []byte
	//go:embed restart.mjs
	restartScript []byte
)

// ErrNoNode says node or npm is missing (make deps installs them).
var ErrNoNode = errors.New("node and npm are needed to run the E2B SDK")

// Prepare makes dir (it must exist) a directory in which `node sdk.mjs`
// and `node bench.mjs` run against the pinned SDK, installing the SDK
// under cache first where it is not yet (npm ci: minutes, once per lock
// file). progress, if set, is told of an install.
func Prepare(cache, dir string, progress func(string)) error {
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %v", ErrNoNode, err)
		}
	}
	sum := sha256.Sum256(packageLock)
	inst := filepath.Join(cache, "e2b-sdk", hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(filepath.Join(inst, "node_modules", "e2b", "package.json")); err != nil {
		if progress != nil {
			progress("installing the E2B SDK (npm ci) into " + inst)
		}
		if err := install(inst); err != nil {
			return err
		}
	}
	if err := os.Symlink(filepath.Join(inst, "node_modules"), filepath.Join(dir, "node_modules")); err != nil {
		return fmt.Errorf("sdktest: %w", err)
	}
	for name, b := range map[string][]byte{"package.json": packageJSON, "sdk.mjs": sdkScript, "bench.mjs": benchScript, "restart.mjs": restartScript} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("sdktest: %w", err)
		}
	}
	return nil
}

// install runs npm ci for the lock file into inst, whole or not at all.
func install(inst string) error {
	if err := os.MkdirAll(filepath.Dir(inst), 0o755); err != nil {
		return fmt.Errorf("sdktest: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(inst), "install-")
	if err != nil {
		return fmt.Errorf("sdktest: %w", err)
	}
	defer os.RemoveAll(tmp)
	for name, b := range map[string][]byte{"package.json": packageJSON, "package-lock.json": packageLock} {
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			return fmt.Errorf("sdktest: %w", err)
		}
	}
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sdktest: npm ci in %s: %v\n%s", tmp, err, out)
	}
	// Into place whole: a concurrent install that won is as good.
	if err := os.Rename(tmp, inst); err != nil {
		if _, serr := os.Stat(filepath.Join(inst, "node_modules", "e2b", "package.json")); serr != nil {
			return fmt.Errorf("sdktest: install the SDK into %s: %w", inst, err)
		}
	}
	return nil
}

package image

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BusyboxPath is the static busybox the tiny image is made of (Debian's
// busybox-static).
var BusyboxPath = "/bin/busybox"

// DebianSuite and DebianPackages define the debian image.
const DebianSuite = "bookworm"

// DebianPackages are installed into the debian image beyond minbase.
var DebianPackages = []string{"bash", "ca-certificates", "curl", "git", "python3", "sudo"}

// DebianUser is the unprivileged user the debian image has, as E2B's
// sandboxes have it: uid 1000, home /home/user, bash, and passwordless
// sudo. The E2B-compatible API runs calls that name no user as it.
const DebianUser = "user"

func fileHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// baseFiles writes what every image needs beyond its packages.
func baseFiles(dir, name string) error {
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "root", "etc", "var/tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	_ = os.Chmod(filepath.Join(dir, "tmp"), os.ModeSticky|0o777) // 0o1777 would drop the sticky bit
	_ = os.Chmod(filepath.Join(dir, "root"), 0o700)
	files := map[string]string{
		"etc/hostname":   "cove\n",
		"etc/cove-image": name + "\n",
	}
	for p, content := range files {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func tinyRecipe() Recipe {
	return Recipe{
		Name:    "tiny",
		SizeMiB: 256,
		Inputs: func() ([]string, error) {
			h, err := fileHash(BusyboxPath)
			if err != nil {
				return nil, fmt.Errorf("image: tiny needs busybox-static: %w", err)
			}
			return []string{"tiny/v1", "busybox=" + h}, nil
		},
		Populate: func(ctx context.Context, dir string, progress func(string)) error {
			progress("tiny: busybox and its applets")
			if err := baseFiles(dir, "tiny"); err != nil {
				return err
			}
			for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin"} {
				if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
					return err
				}
			}
			if err := copyFile(BusyboxPath, filepath.Join(dir, "bin/busybox"), 0o755); err != nil {
				return err
			}
			out, err := exec.CommandContext(ctx, BusyboxPath, "--list-full").Output()
			if err != nil {
				return fmt.Errorf("image: tiny: busybox --list-full: %w", err)
			}
			sc := bufio.NewScanner(strings.NewReader(string(out)))
			for sc.Scan() {
				p := strings.TrimSpace(sc.Text())
				if p == "" || p == "bin/busybox" || strings.Contains(p, "..") {
					continue
				}
				_ = os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
				if err := os.Symlink("/bin/busybox", filepath.Join(dir, p)); err != nil && !os.IsExist(err) {
					return err
				}
			}
			etc := map[string]string{
				"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
				"etc/group":  "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
			}
			for p, c := range etc {
				if err := os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func debianRecipe(b *Builder) Recipe {
	return Recipe{
		Name:    "debian",
		SizeMiB: 4096,
		Inputs: func() ([]string, error) {
			return []string{"debian/v2", DebianSuite, "minbase", strings.Join(DebianPackages, ","), "user=" + DebianUser}, nil
		},
		Populate: func(ctx context.Context, dir string, progress func(string)) error {
			mirror := b.Mirror
			if mirror == "" {
				mirror = hostMirror()
			}
			progress(fmt.Sprintf("debian: debootstrap %s from %s (about a minute)", DebianSuite, mirror))
			if err := runProgress(ctx, progress, "debian: ", "debootstrap", "--variant=minbase",
				"--include="+strings.Join(DebianPackages, ","), DebianSuite, dir, mirror); err != nil {
				return fmt.Errorf("image: debian: %w", err)
			}
			for _, g := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_Packages"} {
				m, _ := filepath.Glob(filepath.Join(dir, g))
				for _, f := range m {
					os.Remove(f)
				}
			}
			if err := addSudoUser(ctx, dir, DebianUser); err != nil {
				return fmt.Errorf("image: debian: %w", err)
			}
			return baseFiles(dir, "debian")
		},
	}
}

// addSudoUser makes name, uid 1000, with a home and bash, in the root
// file system dir (by the guest's own useradd, so its defaults and
// /etc/skel apply), and lets it sudo without a password.
func addSudoUser(ctx context.Context, dir, name string) error {
	if _, err := run(ctx, "", "chroot", dir, "useradd", "--create-home", "--shell", "/bin/bash",
		"--uid", "1000", "--user-group", name); err != nil {
		return fmt.Errorf("add user %s: %w", name, err)
	}
	rule := name + " ALL=(ALL:ALL) NOPASSWD: ALL\n"
	if err := os.WriteFile(filepath.Join(dir, "etc/sudoers.d", name), []byte(rule), 0o440); err != nil {
		return fmt.Errorf("sudo rule for %s: %w", name, err)
	}
	return nil
}

// hostMirror returns the first Debian mirror in the host's apt sources.
func hostMirror() string {
	if b, err := os.ReadFile("/etc/apt/sources.list.d/debian.sources"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "URIs:"); ok {
				for _, u := range strings.Fields(v) {
					if !strings.Contains(u, "security") {
						return u
					}
				}
			}
		}
	}
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == "deb" && !strings.Contains(f[1], "security") {
				return f[1]
			}
		}
	}
	return "http://deb.debian.org/debian"
}

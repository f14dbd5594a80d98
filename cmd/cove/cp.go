package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

func newCpCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files between the local machine and a session",
		Long: `Copy files between the local machine and a session. Exactly one of SRC and
DST is ID:PATH, with PATH an absolute guest path.

Upload (cove cp LOCAL ID:PATH):
  a file goes to PATH, or into PATH/ if PATH is a directory or ends in "/";
  its permission bits are kept;
  a directory D goes to PATH/<base of D> (PATH is created if missing);
  "-" as LOCAL writes stdin to the file PATH.
Download (cove cp ID:PATH LOCAL):
  a file goes to LOCAL, or into LOCAL/ if LOCAL is a directory;
  a directory P goes to LOCAL/<base of P> (LOCAL is created if missing);
  entries that would land outside LOCAL (absolute or ".." names, symlinks
  pointing outside) stop the copy;
  "-" as LOCAL writes a file to stdout, or a directory as a tar archive.`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := planCopy(args[0], args[1])
			if err != nil {
				return usagef(cmd, "%v", err)
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			if p.upload {
				return c.upload(cmd.Context(), cl, p)
			}
			return c.download(cmd.Context(), cl, p)
		},
	}
}

// copyPlan is a parsed "cove cp" command line.
type copyPlan struct {
	upload bool   // local → guest
	id     string // session
	remote string // absolute guest path, as given
	local  string // local path, or "-" for stdin/stdout
}

// splitRemote splits "ID:PATH". As with docker cp, an argument is remote
// when it has a colon and nothing before the colon holds a "/", so that
// "./a:b" is a local path.
func splitRemote(arg string) (id, p string, ok bool) {
	id, p, ok = strings.Cut(arg, ":")
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", "", false
	}
	return id, p, true
}

// planCopy parses cp's two arguments.
func planCopy(src, dst string) (copyPlan, error) {
	sid, spath, sremote := splitRemote(src)
	did, dpath, dremote := splitRemote(dst)
	var p copyPlan
	switch {
	case sremote && dremote:
		return p, errors.New("copying between sessions is not supported; one of SRC and DST must be local")
	case !sremote && !dremote:
		return p, errors.New("one of SRC and DST must be ID:PATH")
	case dremote:
		p = copyPlan{upload: true, id: did, remote: dpath, local: src}
	default:
		p = copyPlan{id: sid, remote: spath, local: dst}
	}
	if !strings.HasPrefix(p.remote, "/") {
		return p, fmt.Errorf("guest path %q is not absolute", p.remote)
	}
	if p.local == "" {
		return p, errors.New("empty local path")
	}
	return p, nil
}

// upload copies a local file, directory or stdin into the guest.
func (c *cli) upload(ctx context.Context, cl *api.Client, p copyPlan) error {
	if p.local == "-" {
		if strings.HasSuffix(p.remote, "/") {
			return fmt.Errorf("cp: cannot write stdin to directory %s", p.remote)
		}
		return cl.WriteFile(ctx, p.id, p.remote, 0, c.stdin)
	}
	fi, err := os.Stat(p.local)
	if err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	if fi.IsDir() {
		return uploadDir(ctx, cl, p.id, path.Clean(p.remote), p.local)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("cp: %s is not a regular file or a directory", p.local)
	}
	target := path.Clean(p.remote)
	if strings.HasSuffix(p.remote, "/") {
		target = path.Join(target, filepath.Base(p.local))
	} else if rfi, err := cl.Stat(ctx, p.id, target); err == nil && rfi.IsDir {
		target = path.Join(target, filepath.Base(p.local))
	} else if err != nil && !api.IsCode(err, api.CodeNotFound) {
		return err
	}
	f, err := os.Open(p.local)
	if err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	defer f.Close()
	return cl.WriteFile(ctx, p.id, target, fi.Mode().Perm(), f)
}

// uploadDir streams a tar of the local directory dir into the guest
// directory remote, entries named from dir's base name.
func uploadDir(ctx context.Context, cl *api.Client, id, remote, dir string) error {
	pr, pw := io.Pipe()
	tarErr := make(chan error, 1)
	go func() {
		err := writeTar(pw, dir)
		pw.CloseWithError(err)
		tarErr <- err
	}()
	err := cl.PutTar(ctx, id, remote, pr)
	pr.CloseWithError(errors.New("upload ended")) // unblock writeTar if the server stopped reading
	if terr := <-tarErr; terr != nil {
		return fmt.Errorf("cp: %w", terr)
	}
	return err
}

// download copies a guest file or directory to a local path or stdout.
func (c *cli) download(ctx context.Context, cl *api.Client, p copyPlan) error {
	fi, err := cl.Stat(ctx, p.id, p.remote)
	if err != nil {
		return err
	}
	if fi.IsDir {
		rc, err := cl.GetTar(ctx, p.id, p.remote)
		if err != nil {
			return err
		}
		defer rc.Close()
		if p.local == "-" {
			_, err := io.Copy(c.stdout, rc)
			return err
		}
		if err := os.MkdirAll(p.local, 0o755); err != nil {
			return fmt.Errorf("cp: %w", err)
		}
		if err := extractTar(rc, p.local); err != nil {
			return fmt.Errorf("cp: %w", err)
		}
		return nil
	}
	rc, err := cl.ReadFile(ctx, p.id, p.remote)
	if err != nil {
		return err
	}
	defer rc.Close()
	if p.local == "-" {
		_, err := io.Copy(c.stdout, rc)
		return err
	}
	target := p.local
	if lfi, err := os.Stat(p.local); err == nil && lfi.IsDir() {
		target = filepath.Join(p.local, path.Base(p.remote))
	} else if os.IsPathSeparator(p.local[len(p.local)-1]) {
		return fmt.Errorf("cp: directory %s does not exist", p.local)
	}
	perm := fs.FileMode(fi.Mode).Perm()
	if perm == 0 {
		perm = 0o644
	}
	if err := writeFileAtomic(target, rc, perm); err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	return nil
}

// writeFileAtomic writes r to a temporary file beside name and renames it
// over name, so that a failed copy leaves name as it was.
func writeFileAtomic(name string, r io.Reader, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".cove-cp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, a no-op
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cove-dev/cove/api"
)

// defaultMaxSize is how much a download may bring by default: the bytes of
// the file, or of all the files in a directory. A guest can make a file of
// any apparent size on a tiny disk (truncate -s 1T); the limit bounds what
// a copy from it transfers and writes.
const defaultMaxSize = 4 << 30

func newCpCmd(c *cli) *cobra.Command {
	maxSize := sizeFlag(defaultMaxSize)
	cmd := &cobra.Command{
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
  that lead outside, alone or through other links) stop the copy;
  zero blocks are written as holes, so sparse files stay sparse;
  a file, or a directory's files together, over --max-size (default 4G)
  stop the copy;
  "-" as LOCAL writes a file to stdout, or a directory as a tar archive.`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := planCopy(args[0], args[1])
			if err != nil {
				return usagef(cmd, "%v", err)
			}
			cl, err := c.client(cmd.Context())
			if err != nil {
				return err
			}
			if p.upload {
				return c.upload(cmd.Context(), cl, p)
			}
			p.maxSize = int64(maxSize)
			return c.download(cmd.Context(), cl, p)
		},
	}
	cmd.Flags().Var(&maxSize, "max-size", "largest download, in bytes or with a K, M, G or T suffix (powers of 1024); 0 for no limit")
	return cmd
}

// sizeFlag is a byte count given as 123, 64K, 512M, 4G or 1T.
type sizeFlag int64

func (s *sizeFlag) String() string { return strconv.FormatInt(int64(*s), 10) }
func (s *sizeFlag) Type() string   { return "size" }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

// parseSize parses a byte count with an optional K, M, G or T suffix
// (powers of 1024; a trailing "iB" or "B" is allowed: 4GiB, 4GB, 4G).
func parseSize(v string) (int64, error) {
	num := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(v)), "B"), "I")
	shift := 0
	if num != "" {
		if i := strings.IndexByte("KMGT", num[len(num)-1]); i >= 0 {
			shift = 10 * (i + 1)
			num = num[:len(num)-1]
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q: want a byte count like 1048576, 512M or 4G", v)
	}
	return n << shift, nil
}

// copyPlan is a parsed "cove cp" command line.
type copyPlan struct {
	upload bool   // local → guest
	id     string // session
	remote string // absolute guest path, as given
	local  string // local path, or "-" for stdin/stdout
	// maxSize bounds a download's file bytes; 0 means no limit.
	maxSize int64
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
		if err := extractTar(rc, p.local, p.maxSize); err != nil {
			return fmt.Errorf("cp: %w%s", err, raiseHint(err))
		}
		return nil
	}
	if p.maxSize > 0 && fi.Size > p.maxSize {
		return fmt.Errorf("cp: %s:%s is %d bytes, over the limit of %d (--max-size)", p.id, p.remote, fi.Size, p.maxSize)
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
	if err := writeFileAtomic(target, &capReader{r: rc, max: p.maxSize}, perm); err != nil {
		return fmt.Errorf("cp: %w%s", err, raiseHint(err))
	}
	return nil
}

// raiseHint says how to copy anyway when err is a size limit's.
func raiseHint(err error) string {
	if errors.Is(err, errTooLarge) {
		return " (raise it with --max-size, or 0 for no limit)"
	}
	return ""
}

// capReader fails with errTooLarge once r gives more than max bytes (the
// guest said how large the file was, but it need not tell the truth);
// max 0 is no limit.
type capReader struct {
	r    io.Reader
	max  int64
	read int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.max <= 0 {
		return c.r.Read(p)
	}
	if left := c.max - c.read + 1; int64(len(p)) > left {
		p = p[:left] // one byte past the limit is enough to know
	}
	n, err := c.r.Read(p)
	if c.read += int64(n); c.read > c.max {
		return n, fmt.Errorf("%w: the file is more than %d bytes", errTooLarge, c.max)
	}
	return n, err
}

// writeFileAtomic writes r to a temporary file beside name and renames it
// over name, so that a failed copy leaves name as it was. Blocks of zeros
// become holes.
func writeFileAtomic(name string, r io.Reader, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".cove-cp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, a no-op
	if _, err := writeSparse(f, r); err != nil {
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

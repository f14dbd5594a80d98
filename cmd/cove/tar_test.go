package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// entry is one tar entry for a test archive.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func archive(t *testing.T, entries ...entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, ModTime: time.Unix(1700000000, 0)}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// TestExtractTarRefusesEscapes protects the local machine from archives
// that name paths outside the destination, directly or through links: no
// write lands outside, and no link is left that leads outside, alone or
// through the links beside it (a later copy into the tree would follow it).
func TestExtractTarRefusesEscapes(t *testing.T) {
	// The deep chain: up points back to the top of out, and
	// results climbs from there, while its text reads as inside.
	const depth = 19
	var deep []string
	for i := 1; i <= depth; i++ {
		deep = append(deep, fmt.Sprintf("x%d", i))
	}
	chain := strings.Join(deep, "/")
	tests := []struct {
		name    string
		entries []entry
		wantErr string
	}{
		{"absolute name", []entry{{name: "/tmp/evil"}}, "absolute name"},
		{"dot-dot name", []entry{{name: "../evil"}}, "leaves the destination"},
		{"dot-dot inside name", []entry{{name: "d/../../evil"}}, "leaves the destination"},
		{"absolute symlink", []entry{{name: "l", typ: tar.TypeSymlink, link: "/etc"}}, "absolute path"},
		{"escaping symlink", []entry{{name: "d/l", typ: tar.TypeSymlink, link: "../../evil"}}, "points outside"},
		{"symlink to the parent", []entry{{name: "l", typ: tar.TypeSymlink, link: ".."}}, "points outside"},
		{"escaping hard link", []entry{{name: "h", typ: tar.TypeLink, link: "../evil"}}, "leaves the destination"},
		{
			// Each link is inside taken alone; together m resolves above
			// the destination.
			"symlink chain",
			[]entry{
				{name: "a/b/", typ: tar.TypeDir, mode: 0o755},
				{name: "a/b/l", typ: tar.TypeSymlink, link: "../.."},
				{name: "m", typ: tar.TypeSymlink, link: "a/b/l/.."},
				{name: "m/evil", body: "x"},
			},
			"steps back out of a symlink",
		},
		{
			// The minimal case: b -> .. then a -> b/../../pwn.
			"two levels through a link",
			[]entry{
				{name: "w/", typ: tar.TypeDir, mode: 0o755},
				{name: "w/b", typ: tar.TypeSymlink, link: ".."},
				{name: "w/a", typ: tar.TypeSymlink, link: "b/../../evil"},
			},
			"steps back out of a symlink",
		},
		{
			"deep chain",
			[]entry{
				{name: "out/" + chain + "/", typ: tar.TypeDir, mode: 0o755},
				{name: "out/" + chain + "/up", typ: tar.TypeSymlink, link: strings.Repeat("../", depth)},
				{name: "out/results", typ: tar.TypeSymlink, link: chain + "/up/" + strings.Repeat("../", depth+1) + "tmp/evil-dir"},
			},
			"steps back out of a symlink",
		},
		{
			// The order does not help: the link that makes the chain comes
			// after the one that uses it.
			"chain made after its use",
			[]entry{
				{name: "w/", typ: tar.TypeDir, mode: 0o755},
				{name: "w/a", typ: tar.TypeSymlink, link: "b/../../evil"},
				{name: "w/b", typ: tar.TypeSymlink, link: ".."},
			},
			"steps back out of a symlink or a missing path",
		},
		{
			// A link to a link that climbs: l2's own text has no "..".
			"link to link",
			[]entry{
				{name: "a/b/", typ: tar.TypeDir, mode: 0o755},
				{name: "a/b/l1", typ: tar.TypeSymlink, link: "../.."},
				{name: "l2", typ: tar.TypeSymlink, link: "a/b/l1"},
				{name: "l3", typ: tar.TypeSymlink, link: "l2/../evil"},
			},
			"steps back out of a symlink",
		},
		{
			// p/s is the top of the tree; a link placed "in" it would have
			// its ".." taken from there.
			"symlink under a symlink",
			[]entry{
				{name: "p/", typ: tar.TypeDir, mode: 0o755},
				{name: "p/s", typ: tar.TypeSymlink, link: ".."},
				{name: "p/s/l", typ: tar.TypeSymlink, link: "../evil"},
			},
			"not a real directory",
		},
		{
			// A hard link to a symlink is the same link in another place,
			// where its relative target means something else.
			"hard link to a symlink",
			[]entry{
				{name: "d1/d2/", typ: tar.TypeDir, mode: 0o755},
				{name: "d1/d2/s", typ: tar.TypeSymlink, link: "../../evil"},
				{name: "h", typ: tar.TypeLink, link: "d1/d2/s"},
			},
			"not a regular file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dest := filepath.Join(parent, "dest")
			if err := os.Mkdir(dest, 0o755); err != nil {
				t.Fatal(err)
			}
			err := extractTar(archive(t, tt.entries...), dest, 0)
			if err == nil {
				t.Fatal("extractTar accepted an escaping archive")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tt.wantErr)
			}
			if testing.Verbose() {
				t.Log(err)
			}
			wantContained(t, parent, dest)
		})
	}
}

// wantContained fails the test if anything named evil was written in
// parent outside dest, or a link under dest resolves outside dest.
func wantContained(t *testing.T, parent, dest string) {
	t.Helper()
	filepath.WalkDir(parent, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		inside := p == dest || strings.HasPrefix(p, dest+string(filepath.Separator))
		if strings.Contains(d.Name(), "evil") && !inside {
			t.Errorf("%s was written", p)
		}
		if inside && d.Type()&fs.ModeSymlink != 0 {
			if r, err := filepath.EvalSymlinks(p); err == nil && r != dest && !strings.HasPrefix(r, dest+string(filepath.Separator)) {
				t.Errorf("link %s was left, resolving outside the destination to %s", p, r)
			}
		}
		return nil
	})
}

// TestExtractTarKeepsInsideLinks protects what the escape checks must not
// refuse: links up and across the tree, links to links, links made before
// their targets, dangling links.
func TestExtractTarKeepsInsideLinks(t *testing.T) {
	parent := t.TempDir()
	dest := filepath.Join(parent, "dest")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	err := extractTar(archive(t,
		entry{name: "p/node_modules/.bin/tsc", typ: tar.TypeSymlink, link: "../typescript/bin/tsc"},
		entry{name: "p/node_modules/typescript/bin/tsc", body: "#!/usr/bin/env node\n", mode: 0o755},
		entry{name: "p/lib", typ: tar.TypeSymlink, link: "node_modules"},
		entry{name: "p/tsc", typ: tar.TypeSymlink, link: "lib/.bin/tsc"},
		entry{name: "p/top", typ: tar.TypeSymlink, link: ".."},
		entry{name: "p/dangling", typ: tar.TypeSymlink, link: "missing/file"},
		entry{name: "p/d/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "p/d/back", typ: tar.TypeSymlink, link: "../d/./../tsc"},
	), dest, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"p/node_modules/.bin/tsc", "p/tsc", "p/d/back"} {
		if b, err := os.ReadFile(filepath.Join(dest, l)); err != nil || !strings.HasPrefix(string(b), "#!") {
			t.Errorf("%s: %q, %v; want the script through the link", l, b, err)
		}
	}
	wantContained(t, parent, dest)
}

// TestCopyIntoEarlierCopy protects the second half of the attack:
// a later copy into a tree an earlier copy made cannot be led outside by
// the links the earlier one left, whatever the order of the two.
func TestCopyIntoEarlierCopy(t *testing.T) {
	parent := t.TempDir()
	dest := filepath.Join(parent, "dest")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	// x beside dest makes a link that escapes to it resolve, so that
	// wantContained sees it.
	if err := os.Mkdir(filepath.Join(parent, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The first copy leaves a dangling r -> n/../x, harmless alone.
	if err := extractTar(archive(t, entry{name: "r", typ: tar.TypeSymlink, link: "n/../x"}), dest, 0); err == nil {
		t.Log("first copy kept r -> n/../x")
	}
	// The second makes n a link to the top: n/.. would be above it.
	_ = extractTar(archive(t, entry{name: "n", typ: tar.TypeSymlink, link: "."}), dest, 0)
	wantContained(t, parent, dest)
	// A third writes a file through whatever is there.
	_ = extractTar(archive(t, entry{name: "r/evil", body: "x"}), dest, 0)
	wantContained(t, parent, dest)
}

// TestExtractTarSparseAndLimit protects the sparse download: zero
// blocks stay holes on the local disk, and the files' sizes together are
// bounded.
func TestExtractTarSparseAndLimit(t *testing.T) {
	body := make([]byte, 8<<20)
	copy(body[3<<20:], "data in the middle")
	copy(body[len(body)-5:], "tail!")
	dest := t.TempDir()
	if err := extractTar(archive(t, entry{name: "sparse", body: string(body)}), dest, 0); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dest, "sparse")
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("sparse file read back as %d bytes (%v), want the %d written", len(got), err, len(body))
	}
	if used := diskUsage(t, p); used > 64<<10 {
		t.Errorf("an 8 MiB file of 23 data bytes uses %d bytes of disk, want holes", used)
	}

	dest = t.TempDir()
	err = extractTar(archive(t, entry{name: "a", body: "0123456789"}, entry{name: "b", body: "0123456789"}), dest, 15)
	if !errors.Is(err, errTooLarge) {
		t.Fatalf("20 bytes of files with a limit of 15: %v, want errTooLarge", err)
	}
	if _, err := os.Stat(filepath.Join(dest, "b")); err == nil {
		t.Error("the file past the limit was written")
	}
}

func diskUsage(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestExtractTar protects what a good archive becomes: files with their
// modes, directories (read-only ones too), inside symlinks, hard links, and
// a symlink already on disk replaced rather than written through.
func TestExtractTar(t *testing.T) {
	dest := t.TempDir()
	t.Cleanup(func() { os.Chmod(filepath.Join(dest, "d", "ro"), 0o755) })
	if err := os.WriteFile(filepath.Join(dest, "target"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target", filepath.Join(dest, "was-link")); err != nil {
		t.Fatal(err)
	}
	err := extractTar(archive(t,
		entry{name: "d/", typ: tar.TypeDir, mode: 0o750},
		entry{name: "d/run.sh", body: "#!/bin/sh\n", mode: 0o755},
		entry{name: "d/ro/", typ: tar.TypeDir, mode: 0o555},
		entry{name: "d/ro/f", body: "ro"},
		entry{name: "d/deep/er/f", body: "parents made"},
		entry{name: "d/l", typ: tar.TypeSymlink, link: "run.sh"},
		entry{name: "d/up", typ: tar.TypeSymlink, link: "../target"},
		entry{name: "d/h", typ: tar.TypeLink, link: "d/run.sh"},
		entry{name: "was-link", body: "new"},
		entry{name: "fifo", typ: tar.TypeFifo},
	), dest, 0)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		path string
		mode fs.FileMode
		body string
	}{
		{"d", fs.ModeDir | 0o750, ""},
		{"d/run.sh", 0o755, "#!/bin/sh\n"},
		{"d/ro", fs.ModeDir | 0o555, ""},
		{"d/ro/f", 0o644, "ro"},
		{"d/deep/er/f", 0o644, "parents made"},
		{"d/l", fs.ModeSymlink, ""},
		{"d/up", fs.ModeSymlink, ""},
		{"d/h", 0o755, "#!/bin/sh\n"},
		{"was-link", 0o644, "new"},
		{"target", 0o644, "keep"},
	}
	for _, c := range checks {
		p := filepath.Join(dest, filepath.FromSlash(c.path))
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		mode := fi.Mode()
		if mode&fs.ModeSymlink != 0 {
			mode = fs.ModeSymlink
		}
		if mode != c.mode {
			t.Errorf("%s: mode %v, want %v", c.path, mode, c.mode)
		}
		if c.body != "" {
			if b, _ := os.ReadFile(p); string(b) != c.body {
				t.Errorf("%s: content %q, want %q", c.path, b, c.body)
			}
		}
	}
	if fi, err := os.Stat(filepath.Join(dest, "d", "run.sh")); err != nil || !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("run.sh mtime not kept: %v %v", fi.ModTime(), err)
	}
	if _, err := os.Lstat(filepath.Join(dest, "fifo")); err == nil {
		t.Error("fifo was extracted")
	}
}

// TestWriteTarRoundTrip protects directory uploads: names from the base
// name, modes and symlinks kept, extractable by extractTar.
func TestWriteTarRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "proj")
	os.MkdirAll(filepath.Join(src, "sub", "empty"), 0o755)
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("a"), 0o600)
	os.WriteFile(filepath.Join(src, "sub", "run"), []byte("run"), 0o755)
	os.Symlink("../a.txt", filepath.Join(src, "sub", "link"))

	var buf bytes.Buffer
	if err := writeTar(&buf, src); err != nil {
		t.Fatal(err)
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		if hdr.Uid != 0 || hdr.Uname != "" {
			t.Errorf("%s: owner %d/%q stored", hdr.Name, hdr.Uid, hdr.Uname)
		}
		names = append(names, hdr.Name)
	}
	want := "proj/ proj/a.txt proj/sub/ proj/sub/empty/ proj/sub/link proj/sub/run"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("entries %q, want %q", got, want)
	}

	dest := t.TempDir()
	if err := extractTar(&buf, dest, 0); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dest, "proj", "a.txt")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("a.txt: %v %v", fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "proj", "sub", "link")); err != nil || string(b) != "a" {
		t.Errorf("link reads %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dest, "proj", "sub", "empty")); err != nil || !fi.IsDir() {
		t.Errorf("empty dir: %v", err)
	}
}

// TestExtractTarDropsSetuidSetgidSticky: a guest's archive asks for a
// setuid and a setgid file and setgid and sticky directories (a guest's
// files may be anything); on the host, where 'cove cp' may run as root,
// none of those bits is set: only the permission bits are kept.
func TestExtractTarDropsSetuidSetgidSticky(t *testing.T) {
	dest := t.TempDir()
	a := archive(t,
		entry{name: "d/", typ: tar.TypeDir, mode: 0o2755},
		entry{name: "shared/", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "d/suid", body: "#!/bin/sh\n", mode: 0o4755},
		entry{name: "d/sgid", body: "#!/bin/sh\n", mode: 0o2711},
		entry{name: "shared/both", body: "x", mode: 0o6777},
	)
	if err := extractTar(a, dest, 0); err != nil {
		t.Fatal(err)
	}
	for name, perm := range map[string]fs.FileMode{"d": 0o755, "shared": 0o777, "d/suid": 0o755, "d/sgid": 0o711, "shared/both": 0o777} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dest, name), &st); err != nil {
			t.Fatal(err)
		}
		if special := st.Mode & (syscall.S_ISUID | syscall.S_ISGID | syscall.S_ISVTX); special != 0 {
			t.Errorf("%s has mode %o on the host: setuid, setgid or sticky (%o) kept", name, st.Mode&0o7777, special)
		}
		// The umask may take bits away, never add them.
		if got := fs.FileMode(st.Mode & 0o777); got&^perm != 0 {
			t.Errorf("%s has permissions %o, more than the archive's %o", name, got, perm)
		}
	}
}

package audit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	f_log "github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
	"golang.org/x/mod/sumdb/note"
)

const fixtureSize = 300 // a full entry bundle (0..255) and a partial one (256..299)

// buildLog appends n entries (names e-0…) with workers goroutines into a
// new log in dir and closes it; it returns the verifier key.
func buildLog(t testing.TB, dir string, n, workers int) string {
	t.Helper()
	l := openTest(t, dir, Options{})
	appendN(t, l, 0, n, workers)
	vkey := l.VerifierKey()
	closeTest(t, l)
	return vkey
}

func appendN(t testing.TB, l *Log, from, n, workers int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := from + w; k < from+n; k += workers {
				if _, err := l.Append(context.Background(), testEntry(fmt.Sprintf("e-%d", k))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func bundlePath(dir string, b uint64, size uint64) string {
	return filepath.Join(dir, layout.EntriesPath(b, layout.PartialTileSize(0, b, size)))
}

func readEntries(t testing.TB, path string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	es, _, err := parseBundle(raw)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func writeEntries(t testing.TB, path string, es [][]byte) {
	t.Helper()
	var raw []byte
	for _, e := range es {
		raw = binary.BigEndian.AppendUint16(raw, uint16(len(e)))
		raw = append(raw, e...)
	}
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// problemsAt returns the indexes Verify blamed, by kind.
func problemsAt(rep Report) map[string][]int64 {
	m := map[string][]int64{}
	for _, p := range rep.Problems {
		m[p.Kind] = append(m[p.Kind], p.Index)
	}
	return m
}

// TestVerifyTampering tampers with copies of a log in each way the issue
// names; Verify reports each by index and fails.
func TestVerifyTampering(t *testing.T) {
	ctx := context.Background()
	orig := filepath.Join(t.TempDir(), "audit")
	vkey := buildLog(t, orig, fixtureSize, 8)
	b0 := bundlePath(orig, 0, fixtureSize)
	b1 := bundlePath(orig, 1, fixtureSize)
	rel := func(p string) string { r, _ := filepath.Rel(orig, p); return r }

	cases := []struct {
		name   string
		tamper func(t *testing.T, dir string)
		want   map[string][]int64 // exactly these problems
	}{
		{"untouched", func(*testing.T, string) {}, map[string][]int64{}},
		{"flip a byte", func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel(b0))
			es := readEntries(t, p)
			es[7] = slices.Clone(es[7])
			es[7][len(es[7])/2] ^= 0x01
			writeEntries(t, p, es)
		}, map[string][]int64{ProblemAltered: {7}}},
		{"truncate a bundle", func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel(b1))
			es := readEntries(t, p)
			var off int
			for _, e := range es[:290-256] {
				off += 2 + len(e)
			}
			if err := os.Truncate(p, int64(off+5)); err != nil {
				t.Fatal(err)
			}
		}, map[string][]int64{ProblemUnread: {290}, ProblemRemoved: {290, 291, 292, 293, 294, 295, 296, 297, 298, 299}}},
		{"drop an entry", func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel(b0))
			es := readEntries(t, p)
			writeEntries(t, p, slices.Delete(es, 10, 11))
		}, map[string][]int64{ProblemRemoved: {10}}},
		{"insert an entry", func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel(b1))
			es := readEntries(t, p)
			forged, _ := testEntry("forged").Marshal()
			writeEntries(t, p, slices.Insert(es, 270-256, forged))
		}, map[string][]int64{ProblemInserted: {270}}},
		{"swap two neighbours", func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel(b0))
			es := readEntries(t, p)
			es[20], es[21] = es[21], es[20]
			writeEntries(t, p, es)
		}, map[string][]int64{ProblemReordered: {20, 21}}},
		{"swap two far apart", func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel(b0))
			es := readEntries(t, p)
			es[30], es[140] = es[140], es[30]
			writeEntries(t, p, es)
		}, map[string][]int64{ProblemReordered: {30, 140}}},
		{"rewrite the tail and re-sign with another key", func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel(b1))
			es := readEntries(t, p)
			for i := 295 - 256; i < len(es); i++ {
				es[i], _ = testEntry(fmt.Sprintf("rewritten-%d", i)).Marshal()
			}
			writeEntries(t, p, es)
			resign(t, dir, testOrigin)
		}, map[string][]int64{ProblemSignature: {-1}, ProblemAltered: {295, 296, 297, 298, 299}}},
		{"rebuild the tail, tiles too, and re-sign with another key", func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel(b1))
			es := readEntries(t, p)
			var tile []byte
			for i := range es {
				if i >= 295-256 {
					es[i], _ = testEntry(fmt.Sprintf("rewritten-%d", i)).Marshal()
				}
				tile = append(tile, rfc6962.DefaultHasher.HashLeaf(es[i])...)
			}
			writeEntries(t, p, es)
			tp := filepath.Join(dir, layout.TilePath(0, 1, layout.PartialTileSize(0, 1, fixtureSize)))
			if err := os.WriteFile(tp, tile, 0o644); err != nil {
				t.Fatal(err)
			}
			resign(t, dir, testOrigin)
		}, map[string][]int64{ProblemSignature: {-1}}},
		{"alter an entry and its tile hash to match", func(t *testing.T, dir string) {
			p := filepath.Join(dir, rel(b0))
			es := readEntries(t, p)
			es[7], _ = testEntry("rewritten").Marshal()
			writeEntries(t, p, es)
			tp := filepath.Join(dir, layout.TilePath(0, 0, 0))
			tile, err := os.ReadFile(tp)
			if err != nil {
				t.Fatal(err)
			}
			copy(tile[7*32:], rfc6962.DefaultHasher.HashLeaf(es[7]))
			os.WriteFile(tp, tile, 0o644)
		}, map[string][]int64{ProblemRoot: {-1}}},
		{"alter a hash tile only", func(t *testing.T, dir string) {
			p := filepath.Join(dir, layout.TilePath(0, 0, 0))
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			raw[5*32] ^= 0xff
			os.WriteFile(p, raw, 0o644)
		}, map[string][]int64{ProblemTile: {5}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "copy")
			copyDir(t, orig, dir)
			c.tamper(t, dir)
			rep, err := Verify(ctx, dir, vkey, "")
			got := problemsAt(rep)
			if !equalProblems(got, c.want) {
				t.Fatalf("problems %v\nwant %v\n(%v)", got, c.want, rep.Problems)
			}
			if len(c.want) == 0 {
				if err != nil || rep.Size != fixtureSize {
					t.Fatalf("untouched copy: size %d, %v", rep.Size, err)
				}
				return
			}
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("Verify: %v, want ErrTampered", err)
			}
		})
	}
}

func equalProblems(a, b map[string][]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// resign writes a checkpoint over dir's entries as they now are, signed by
// a new key of the same name.
func resign(t testing.TB, dir, origin string) {
	t.Helper()
	s, _ := otherKey(t, origin)
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for b := uint64(0); b*bundleWidth < fixtureSize; b++ {
		for _, e := range readEntries(t, bundlePath(dir, b, fixtureSize)) {
			r.Append(rfc6962.DefaultHasher.HashLeaf(e), nil)
		}
	}
	root, _ := r.GetRootHash(nil)
	body := f_log.Checkpoint{Origin: origin, Size: r.End(), Hash: root}.Marshal()
	signed, err := note.Sign(&note.Note{Text: string(body)}, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, layout.CheckpointPath), signed, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyRollbackAndFork: with a state file, an older copy of the log is
// a rollback, and a history rebuilt with the log's own key (what an
// operator with root could do) is a fork, though it verifies on its own.
func TestVerifyRollbackAndFork(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "audit")
	state := filepath.Join(tmp, "verified.json")
	vkey := buildLog(t, dir, 100, 4)
	old := filepath.Join(tmp, "old")
	copyDir(t, dir, old)
	if _, err := Verify(ctx, old, vkey, state); err != nil {
		t.Fatalf("Verify old: %v", err)
	}

	l := openTest(t, dir, Options{})
	appendN(t, l, 100, 20, 4)
	closeTest(t, l)
	rep, err := Verify(ctx, dir, vkey, state)
	if err != nil || rep.Size != 120 || rep.PreviousSize != 100 {
		t.Fatalf("Verify grown log: size %d (previous %d), %v", rep.Size, rep.PreviousSize, err)
	}
	rep, err = Verify(ctx, old, vkey, state)
	if !errors.Is(err, ErrTampered) || problemsAt(rep)[ProblemRollback] == nil {
		t.Fatalf("Verify of the old copy after the new: %v, %v; want a rollback", err, rep.Problems)
	}

	// A fork: the same key, the same size, one entry different.
	forked := filepath.Join(tmp, "forked")
	fl := openTest(t, forked, Options{KeyPath: DefaultKeyPath(dir)})
	for k := range 120 {
		name := fmt.Sprintf("e-%d", k)
		if k == 60 {
			name = "forged"
		}
		if _, err := fl.Append(ctx, testEntry(name)); err != nil {
			t.Fatal(err)
		}
	}
	closeTest(t, fl)
	if _, err := Verify(ctx, forked, vkey, ""); err != nil {
		t.Fatalf("the forked log does not verify on its own: %v", err)
	}
	rep, err = Verify(ctx, forked, vkey, state)
	if !errors.Is(err, ErrTampered) || problemsAt(rep)[ProblemFork] == nil {
		t.Fatalf("Verify of a fork: %v, %v; want a fork", err, rep.Problems)
	}
	// The state is unchanged by failures: the grown log still verifies.
	if _, err := Verify(ctx, dir, vkey, state); err != nil {
		t.Fatalf("Verify after refusals: %v", err)
	}
}

// copyDir copies the log directory src to dst (a copy to tamper with).
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, in); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	if err != nil {
		t.Fatalf("copy %s: %v", src, err)
	}
}

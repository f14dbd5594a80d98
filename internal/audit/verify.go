package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cove-dev/cove/internal/keyfile"
	f_log "github.com/transparency-dev/formats/log"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
	"golang.org/x/mod/sumdb/note"
)

// ErrTampered is wrapped by Verify's error when the log fails a check.
var ErrTampered = errors.New("audit log fails verification")

// The kinds of Problem.
const (
	ProblemAltered   = "altered"   // the entry at Index is not the one the tree committed to
	ProblemRemoved   = "removed"   // the entry at Index is gone
	ProblemInserted  = "inserted"  // an entry the tree never held sits at Index
	ProblemReordered = "reordered" // the entry at Index is another index's
	ProblemTile      = "tile"      // a hash tile disagrees with entries that prove out
	ProblemSignature = "signature" // the checkpoint is not signed by the key
	ProblemRoot      = "root"      // the entries do not hash to the checkpoint's root
	ProblemRollback  = "rollback"  // the checkpoint is older than the last verified one
	ProblemFork      = "fork"      // the log no longer extends the last verified one
	ProblemWitness   = "witness"   // a required witness has not co-signed the checkpoint
	ProblemUnread    = "unreadable"
)

// Problem is one failed check; Index is -1 when no single entry is to blame.
type Problem struct {
	Index  int64  `json:"index"`
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

func (p Problem) String() string {
	if p.Index < 0 {
		return fmt.Sprintf("%s: %s", p.Kind, p.Detail)
	}
	return fmt.Sprintf("entry %d: %s: %s", p.Index, p.Kind, p.Detail)
}

// Report is what Verify found.
type Report struct {
	Origin       string
	Size         uint64 // the checkpoint's size: the entries checked
	Root         []byte
	PreviousSize uint64   // the last verified size, from the state file
	Witnesses    []string // the names of the required witnesses that co-signed
	Problems     []Problem
}

// verifiedState is the state file: the last checkpoint verified.
type verifiedState struct {
	Origin     string `json:"origin"`
	Size       uint64 `json:"size"`
	Root       []byte `json:"root"`
	Checkpoint string `json:"checkpoint"`
}

// Verify checks a copy of a log directory with no server: the checkpoint's
// signature by verifierKey; every entry bundle against the level-0 hash
// tiles (reporting each altered, removed, inserted or reordered entry by
// index); the tree recomputed from the entries against the checkpoint's
// root. With statePath, it also refuses a checkpoint smaller than the last
// one verified there (rollback) or a tree whose first entries no longer
// hash to that one's root (fork: the consistency check, done on the leaves
// themselves), and records the checkpoint there once all passed. Each of
// witnessKeys (cosignature/v1 verifier keys) must have co-signed the
// checkpoint: a witness co-signs only a checkpoint consistent with all it
// co-signed before, so a log forked to show two histories fails here.
//
// The error wraps ErrTampered when a check failed (Report.Problems says
// which); another error is a failure to verify at all.
func Verify(ctx context.Context, dir, verifierKey, statePath string, witnessKeys ...string) (Report, error) {
	var rep Report
	v, err := note.NewVerifier(verifierKey)
	if err != nil {
		return rep, fmt.Errorf("audit: verify: verifier key: %w", err)
	}
	witnesses := make([]note.Verifier, 0, len(witnessKeys))
	for _, k := range witnessKeys {
		wv, err := f_note.NewVerifierForCosignatureV1(k)
		if err != nil {
			return rep, fmt.Errorf("audit: verify: witness key %q: %w", k, err)
		}
		witnesses = append(witnesses, wv)
	}
	raw, err := os.ReadFile(filepath.Join(dir, layout.CheckpointPath))
	if err != nil {
		return rep, fmt.Errorf("audit: verify: %w", err)
	}
	rep.Origin = v.Name()
	cp, _, _, err := f_log.ParseCheckpoint(raw, v.Name(), v)
	signed := err == nil
	if err != nil {
		rep.Problems = append(rep.Problems, Problem{-1, ProblemSignature, err.Error()})
		// Go on with the unverified body, to say which entries differ.
		cp = &f_log.Checkpoint{}
		if _, uerr := cp.Unmarshal(raw); uerr != nil {
			return rep, fmt.Errorf("audit: verify: %w: %v", ErrTampered, rep.Problems)
		}
	}
	rep.Size, rep.Root = cp.Size, cp.Hash
	for _, wv := range witnesses {
		if cosignedBy(raw, wv) {
			rep.Witnesses = append(rep.Witnesses, wv.Name())
		} else {
			rep.Problems = append(rep.Problems, Problem{-1, ProblemWitness, fmt.Sprintf("the checkpoint of size %d has no valid cosignature of witness %s", cp.Size, wv.Name())})
		}
	}

	var prev *verifiedState
	if statePath != "" {
		if prev, err = readState(statePath); err != nil {
			return rep, err
		}
		if prev != nil {
			rep.PreviousSize = prev.Size
			if prev.Origin != rep.Origin {
				rep.Problems = append(rep.Problems, Problem{-1, ProblemFork, fmt.Sprintf("state is of log %q, not %q", prev.Origin, rep.Origin)})
				prev = nil
			} else if cp.Size < prev.Size {
				rep.Problems = append(rep.Problems, Problem{-1, ProblemRollback, fmt.Sprintf("checkpoint size %d is below the %d verified before", cp.Size, prev.Size)})
				prev = nil
			}
		}
	}

	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	fromEntries, fromTiles := rf.NewEmptyRange(0), rf.NewEmptyRange(0)
	var prefixRoot []byte
	var entryProblems []Problem
	for b := uint64(0); b*bundleWidth < cp.Size; b++ {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("audit: verify: %w", err)
		}
		p := layout.PartialTileSize(0, b, cp.Size)
		n := int(p)
		if p == 0 {
			n = bundleWidth
		}
		base := b * bundleWidth
		got, probs := readBundleFile(dir, b, p, n)
		entryProblems = append(entryProblems, probs...)
		want, probs := readTileFile(dir, b, p, n)
		rep.Problems = append(rep.Problems, probs...)

		hashes := make([][]byte, len(got))
		for i, e := range got {
			hashes[i] = rfc6962.DefaultHasher.HashLeaf(e)
		}
		entryProblems = append(entryProblems, align(base, hashes, want)...)
		for i, h := range hashes {
			if base+uint64(i) >= cp.Size {
				break
			}
			if err := fromEntries.Append(h, nil); err != nil {
				return rep, fmt.Errorf("audit: verify: %w", err)
			}
			if prev != nil && fromEntries.End() == prev.Size {
				if prefixRoot, err = fromEntries.GetRootHash(nil); err != nil {
					return rep, fmt.Errorf("audit: verify: %w", err)
				}
			}
		}
		for _, h := range want {
			if err := fromTiles.Append(h, nil); err != nil {
				return rep, fmt.Errorf("audit: verify: %w", err)
			}
		}
	}
	entriesRoot, _ := fromEntries.GetRootHash(nil)
	tilesRoot, _ := fromTiles.GetRootHash(nil)
	// Entries prove out only against a root the key signed.
	rootOK := fromEntries.End() == cp.Size && bytes.Equal(entriesRoot, cp.Hash)
	switch {
	case signed && rootOK:
		// The entries prove out: what disagrees is the tiles.
		for _, p := range entryProblems {
			if p.Kind != ProblemUnread {
				p.Detail = fmt.Sprintf("hash tile disagrees (%s %s), the entries match the checkpoint", p.Kind, p.Detail)
				p.Kind = ProblemTile
			}
			rep.Problems = append(rep.Problems, p)
		}
	default:
		rep.Problems = append(rep.Problems, entryProblems...)
		if len(entryProblems) == 0 && !rootOK {
			detail := fmt.Sprintf("%d entries hash to %x, the checkpoint says %d entries, %x", fromEntries.End(), entriesRoot, cp.Size, cp.Hash)
			if !bytes.Equal(tilesRoot, cp.Hash) {
				detail += "; the hash tiles do not match it either"
			}
			rep.Problems = append(rep.Problems, Problem{-1, ProblemRoot, detail})
		}
	}
	if prev != nil && prev.Size > 0 && !bytes.Equal(prefixRoot, prev.Root) {
		rep.Problems = append(rep.Problems, Problem{-1, ProblemFork, fmt.Sprintf("the first %d entries hash to %x, verified before as %x", prev.Size, prefixRoot, prev.Root)})
	}
	if len(rep.Problems) > 0 {
		return rep, fmt.Errorf("audit: verify %s: %w: %d problems, first: %v", dir, ErrTampered, len(rep.Problems), rep.Problems[0])
	}
	if statePath != "" {
		st := verifiedState{Origin: rep.Origin, Size: cp.Size, Root: cp.Hash, Checkpoint: string(raw)}
		if err := writeState(statePath, st); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// readFile reads a tile-space resource: the partial file for p > 0, else
// (or when the partial one was collected) the full one, trimmed by the caller.
func readFile(dir, partialPath, fullPath string, p uint8) ([]byte, error) {
	if p > 0 {
		b, err := os.ReadFile(filepath.Join(dir, partialPath))
		if !errors.Is(err, fs.ErrNotExist) {
			return b, err
		}
	}
	return os.ReadFile(filepath.Join(dir, fullPath))
}

// readBundleFile returns the entries of bundle b (n of them by the
// checkpoint), and a problem for each entry it cannot read.
func readBundleFile(dir string, b uint64, p uint8, n int) ([][]byte, []Problem) {
	base := int64(b * bundleWidth)
	raw, err := readFile(dir, layout.EntriesPath(b, p), layout.EntriesPath(b, 0), p)
	if err != nil {
		return nil, []Problem{{base, ProblemUnread, fmt.Sprintf("entry bundle %d: %v", b, err)}}
	}
	entries, off, err := parseBundle(raw)
	var probs []Problem
	if err != nil {
		probs = append(probs, Problem{base + int64(len(entries)), ProblemUnread, fmt.Sprintf("entry bundle %d: %v (byte %d)", b, err, off)})
	}
	full, _ := os.Stat(filepath.Join(dir, layout.EntriesPath(b, p)))
	if full == nil && len(entries) > n {
		entries = entries[:n] // a full bundle read for a partial one: the rest came later
	}
	return entries, probs
}

// readTileFile returns the level-0 hashes of tile b (n of them).
func readTileFile(dir string, b uint64, p uint8, n int) ([][]byte, []Problem) {
	raw, err := readFile(dir, layout.TilePath(0, b, p), layout.TilePath(0, b, 0), p)
	if err == nil && len(raw)%32 != 0 {
		err = fmt.Errorf("%d bytes is not a whole number of hashes", len(raw))
	}
	if err != nil {
		return nil, []Problem{{-1, ProblemUnread, fmt.Sprintf("hash tile 0/%d: %v", b, err)}}
	}
	var hs [][]byte
	for i := 0; i < len(raw) && len(hs) < n; i += 32 {
		hs = append(hs, raw[i:i+32])
	}
	return hs, nil
}

// align compares the leaf hashes of a bundle's entries (got) with the hash
// tile's (want) and names each difference by index.
func align(base uint64, got, want [][]byte) []Problem {
	var probs []Problem
	at := func(j int, kind, detail string) {
		probs = append(probs, Problem{int64(base) + int64(j), kind, detail})
	}
	eq := func(i, j int) bool { return i < len(got) && j < len(want) && bytes.Equal(got[i], want[j]) }
	find := func(h []byte) int {
		for k, w := range want {
			if bytes.Equal(h, w) {
				return k
			}
		}
		return -1
	}
	for i, j := 0, 0; i < len(got) || j < len(want); {
		switch {
		case eq(i, j):
			i, j = i+1, j+1
		case j >= len(want):
			at(i, ProblemInserted, "an entry beyond the tree's")
			i++
		case i >= len(got):
			at(j, ProblemRemoved, "missing from its bundle")
			j++
		case eq(i, j+1) && eq(i+1, j):
			at(j, ProblemReordered, fmt.Sprintf("holds entry %d", base+uint64(j)+1))
			at(j+1, ProblemReordered, fmt.Sprintf("holds entry %d", base+uint64(j)))
			i, j = i+2, j+2
		case eq(i, j+1):
			at(j, ProblemRemoved, "missing; the next entries moved up")
			j++
		case eq(i+1, j):
			at(j, ProblemInserted, "an entry the tree never held")
			i++
		default:
			if k := find(got[i]); k >= 0 {
				at(j, ProblemReordered, fmt.Sprintf("holds entry %d", base+uint64(k)))
			} else {
				at(j, ProblemAltered, "its leaf hash is not the tree's")
			}
			i, j = i+1, j+1
		}
	}
	return probs
}

func readState(path string) (*verifiedState, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: verify: state: %w", err)
	}
	var st verifiedState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("audit: verify: state %s: %w", path, err)
	}
	return &st, nil
}

func writeState(path string, st verifiedState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("audit: verify: state: %w", err)
	}
	if err := keyfile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("audit: verify: state: %w", err)
	}
	return nil
}

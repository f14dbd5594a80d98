// Package witness is a transparency-log witness: it co-signs a log's
// checkpoints, each only once it has checked that the log grew from the
// last checkpoint it co-signed without rewriting anything (a consistency
// proof). A log that forks, showing one history to some and another to
// others, cannot get both co-signed. It speaks the C2SP tlog-witness
// protocol (POST /add-checkpoint) and co-signs with C2SP tlog-cosignature
// (cosignature/v1, Ed25519), so tessera's witness client, which cove's
// audit log uses, talks to it, and so would other witnesses' clients.
//
// It is a minimal witness built on transparency-dev's packages (the
// checkpoint and note formats, merkle proofs): a fixed set of logs, its
// state in one file. It does not gossip or serve its state to monitors.
package witness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cove-dev/cove/internal/keyfile"
	f_log "github.com/transparency-dev/formats/log"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Limits on what a client may send.
const (
	maxBody        = 16 << 10 // a checkpoint with its signatures, and a proof
	maxProofHashes = 63       // a consistency proof of a 2^63-entry tree
)

// Files in the witness's directory.
const (
	keyFile   = "witness.key"
	stateFile = "state.json"
)

// Witness co-signs the checkpoints of the logs it knows. Its methods are
// safe for concurrent use.
type Witness struct {
	dir    string
	signer *f_note.Signer
	vkey   string
	logs   map[string]note.Verifier // by origin
	log    *slog.Logger

	mu    sync.Mutex
	state map[string]treeState // by origin; guarded by mu
}

// treeState is the latest checkpoint co-signed for a log.
type treeState struct {
	Size uint64 `json:"size"`
	Root []byte `json:"root"`
}

// New opens the witness kept in dir, creating its key (named name) when
// absent. logKeys are the note verifier keys of the logs it co-signs; a
// checkpoint of any other log is refused.
func New(dir, name string, logKeys []string, log *slog.Logger) (*Witness, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	signer, vkey, err := loadOrCreateKey(filepath.Join(dir, keyFile), name)
	if err != nil {
		return nil, err
	}
	w := &Witness{dir: dir, signer: signer, vkey: vkey, logs: map[string]note.Verifier{}, log: log, state: map[string]treeState{}}
	for _, k := range logKeys {
		v, err := note.NewVerifier(k)
		if err != nil {
			return nil, fmt.Errorf("witness: log key %q: %w", k, err)
		}
		w.logs[v.Name()] = v
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("witness: state: %w", err)
	default:
		if err := json.Unmarshal(b, &w.state); err != nil || w.state == nil {
			return nil, fmt.Errorf("witness: state %s: not a JSON object: %v", filepath.Join(dir, stateFile), err)
		}
	}
	return w, nil
}

// VerifierKey is the witness's cosignature/v1 verifier key: what a log's
// operator gives `cove audit witness add`, and a verifier `cove audit
// verify --witness`.
func (w *Witness) VerifierKey() string { return w.vkey }

// KeyFromDir returns the verifier key of the witness kept in dir, without
// starting it.
func KeyFromDir(dir string) (string, error) {
	skey, err := keyfile.Read(filepath.Join(dir, keyFile))
	if err != nil {
		return "", fmt.Errorf("witness: %w", err)
	}
	_, vkey, err := cosigner(skey)
	return vkey, err
}

func loadOrCreateKey(path, name string) (*f_note.Signer, string, error) {
	skey, err := keyfile.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		if name == "" {
			return nil, "", fmt.Errorf("witness: create key %s: no name", path)
		}
		skey, _, err = note.GenerateKey(rand.Reader, name)
		if err != nil {
			return nil, "", fmt.Errorf("witness: generate key: %w", err)
		}
		if err := keyfile.Create(path, []byte(skey+"\n")); err != nil {
			return nil, "", fmt.Errorf("witness: %w", err)
		}
	} else if err != nil {
		return nil, "", fmt.Errorf("witness: %w", err)
	}
	s, vkey, err := cosigner(skey)
	if err != nil {
		return nil, "", err
	}
	if name != "" && s.Name() != name {
		return nil, "", fmt.Errorf("witness: key %s is named %q, not %q", path, s.Name(), name)
	}
	return s, vkey, nil
}

// cosigner makes the cosignature/v1 signer of a note signer key, and its
// verifier key.
func cosigner(skey string) (*f_note.Signer, string, error) {
	s, err := f_note.NewSignerForCosignatureV1(skey)
	if err != nil {
		return nil, "", fmt.Errorf("witness: key: %w", err)
	}
	std, err := keyfile.NoteVerifierKey(skey)
	if err != nil {
		return nil, "", fmt.Errorf("witness: %w", err)
	}
	vkey, err := f_note.VKeyToCosignatureV1(std)
	if err != nil {
		return nil, "", fmt.Errorf("witness: key: %w", err)
	}
	return s, vkey, nil
}

// Errors of Add, each answered with its own HTTP status.
var (
	ErrUnknownLog = errors.New("unknown log")                      // 404
	ErrSignature  = errors.New("no signature of the log verifies") // 403
	ErrBadRequest = errors.New("malformed request")                // 400
	ErrProof      = errors.New("consistency proof fails")          // 422
)

// ConflictError says the client's old size is not the size of the
// latest checkpoint co-signed for its log (409, with that size), or that a
// checkpoint of that same size has another root (409, Fork set).
type ConflictError struct {
	Size uint64
	Fork bool
}

func (e *ConflictError) Error() string {
	if e.Fork {
		return fmt.Sprintf("a checkpoint of size %d with another root hash was co-signed: the log forked", e.Size)
	}
	return fmt.Sprintf("the latest co-signed checkpoint has size %d", e.Size)
}

// Add checks the checkpoint cp (a signed note) against the latest one
// co-signed for its log, whose size the client says is oldSize, with the
// consistency proof from there; it records cp and returns its
// cosignature lines (each "— name base64\n").
func (w *Witness) Add(ctx context.Context, oldSize uint64, consistency [][]byte, cp []byte) ([]byte, error) {
	origin, _, _ := bytes.Cut(cp, []byte("\n"))
	v, ok := w.logs[string(origin)]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownLog, origin)
	}
	n, err := note.Open(cp, note.VerifierList(v))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		if errors.As(err, &unverified) || errors.As(err, &invalid) {
			return nil, fmt.Errorf("%w: %v", ErrSignature, err)
		}
		return nil, fmt.Errorf("%w: checkpoint: %v", ErrBadRequest, err)
	}
	c := &f_log.Checkpoint{}
	if _, err := c.Unmarshal([]byte(n.Text)); err != nil {
		return nil, fmt.Errorf("%w: checkpoint: %v", ErrBadRequest, err)
	}
	if oldSize > c.Size {
		return nil, fmt.Errorf("%w: old size %d is over the checkpoint's %d", ErrBadRequest, oldSize, c.Size)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.state[c.Origin]
	if oldSize != prev.Size {
		return nil, &ConflictError{Size: prev.Size}
	}
	switch {
	case oldSize == c.Size && prev.Root != nil:
		if !bytes.Equal(prev.Root, c.Hash) {
			w.log.Warn("witness: a log showed two roots for one size", "origin", c.Origin, "size", c.Size)
			return nil, &ConflictError{Size: prev.Size, Fork: true}
		}
		if len(consistency) != 0 {
			return nil, fmt.Errorf("%w: a proof between equal sizes must be empty", ErrProof)
		}
	case oldSize == 0:
		if len(consistency) != 0 {
			return nil, fmt.Errorf("%w: a proof from size 0 must be empty", ErrProof)
		}
	default:
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, oldSize, c.Size, consistency, prev.Root, c.Hash); err != nil {
			w.log.Warn("witness: a checkpoint does not extend the one co-signed before", "origin", c.Origin, "old_size", oldSize, "size", c.Size, "err", err)
			return nil, fmt.Errorf("%w: from size %d to %d: %v", ErrProof, oldSize, c.Size, err)
		}
	}
	// Recorded before the cosignature leaves: a witness that signed and
	// then lost its state could be led to sign a fork.
	next := maps.Clone(w.state)
	next[c.Origin] = treeState{Size: c.Size, Root: c.Hash}
	if err := w.save(next); err != nil {
		return nil, err
	}
	w.state = next
	signed, err := note.Sign(&note.Note{Text: n.Text}, w.signer)
	if err != nil {
		return nil, fmt.Errorf("witness: cosign: %w", err)
	}
	// The signed note is the text, a blank line, and our one signature.
	return signed[len(n.Text)+1:], nil
}

func (w *Witness) save(st map[string]treeState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("witness: state: %w", err)
	}
	if err := keyfile.WriteFile(filepath.Join(w.dir, stateFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("witness: state: %w", err)
	}
	return nil
}

// ServeHTTP serves POST /add-checkpoint.
func (w *Witness) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/add-checkpoint" {
		http.NotFound(rw, r)
		return
	}
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		http.Error(rw, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, maxBody))
	if err != nil {
		http.Error(rw, fmt.Sprintf("request body: %v", err), http.StatusRequestEntityTooLarge)
		return
	}
	oldSize, consistency, cp, err := parseRequest(body)
	if err == nil {
		var sigs []byte
		if sigs, err = w.Add(r.Context(), oldSize, consistency, cp); err == nil {
			rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = rw.Write(sigs)
			return
		}
	}
	var conflict *ConflictError
	switch {
	case errors.As(err, &conflict) && !conflict.Fork:
		rw.Header().Set("Content-Type", "text/x.tlog.size")
		rw.WriteHeader(http.StatusConflict)
		fmt.Fprintf(rw, "%d\n", conflict.Size)
	case errors.As(err, &conflict):
		http.Error(rw, err.Error(), http.StatusConflict)
	case errors.Is(err, ErrUnknownLog):
		http.Error(rw, err.Error(), http.StatusNotFound)
	case errors.Is(err, ErrSignature):
		http.Error(rw, err.Error(), http.StatusForbidden)
	case errors.Is(err, ErrBadRequest):
		http.Error(rw, err.Error(), http.StatusBadRequest)
	case errors.Is(err, ErrProof):
		http.Error(rw, err.Error(), http.StatusUnprocessableEntity)
	default:
		w.log.Error("witness: add-checkpoint", "err", err)
		http.Error(rw, "internal error", http.StatusInternalServerError)
	}
}

// parseRequest reads an add-checkpoint body: "old N", a base64 hash per
// line of the consistency proof, an empty line, and the checkpoint.
func parseRequest(body []byte) (uint64, [][]byte, []byte, error) {
	// The first empty line ends the head: the checkpoint's own empty line
	// (before its signatures) comes later.
	head, cp, ok := bytes.Cut(body, []byte("\n\n"))
	if !ok {
		return 0, nil, nil, fmt.Errorf("%w: no empty line before the checkpoint", ErrBadRequest)
	}
	sc := bufio.NewScanner(bytes.NewReader(head))
	if !sc.Scan() {
		return 0, nil, nil, fmt.Errorf("%w: no old size line", ErrBadRequest)
	}
	sizeStr, ok := strings.CutPrefix(sc.Text(), "old ")
	if !ok {
		return 0, nil, nil, fmt.Errorf("%w: first line %q is not \"old <size>\"", ErrBadRequest, sc.Text())
	}
	oldSize, err := strconv.ParseUint(sizeStr, 10, 64)
	if err != nil || (len(sizeStr) > 1 && sizeStr[0] == '0') {
		return 0, nil, nil, fmt.Errorf("%w: old size %q is not a decimal", ErrBadRequest, sizeStr)
	}
	var hashes [][]byte
	for sc.Scan() {
		h, err := base64.StdEncoding.DecodeString(sc.Text())
		if err != nil || len(h) != rfc6962.DefaultHasher.Size() {
			return 0, nil, nil, fmt.Errorf("%w: proof line %q is not a base64 SHA-256 hash", ErrBadRequest, sc.Text())
		}
		if hashes = append(hashes, h); len(hashes) > maxProofHashes {
			return 0, nil, nil, fmt.Errorf("%w: proof of over %d hashes", ErrBadRequest, maxProofHashes)
		}
	}
	return oldSize, hashes, cp, nil
}

package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cove-dev/cove/internal/keyfile"
	f_note "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

// DefaultWitnessTimeout bounds how long a checkpoint waits for its
// witnesses before it is published without the missing cosignatures.
const DefaultWitnessTimeout = 3 * time.Second

// Witness is a transparency-log witness the log hands each checkpoint to
// (C2SP tlog-witness): the URL it answers add-checkpoint under, and its
// cosignature/v1 verifier key.
type Witness struct {
	URL string `json:"url"`
	Key string `json:"key"`
}

// WitnessStatus is a configured witness and whether the latest published
// checkpoint carries its cosignature.
type WitnessStatus struct {
	Witness
	Name     string
	Cosigned bool
}

// WitnessesPath is the file where the log in dir keeps its witnesses: a
// sibling, like its key, so that copying the log does not copy them.
func WitnessesPath(dir string) string { return filepath.Clean(dir) + ".witnesses" }

// ErrInvalidWitness is wrapped by AddWitness's error for a bad URL or key.
var ErrInvalidWitness = errors.New("invalid witness")

// witnessSet is the log's witness policy, which tessera asks before each
// checkpoint it publishes: every configured witness must co-sign. It can
// change while the log runs.
type witnessSet struct {
	path string
	mu   sync.Mutex
	list []witnessEntry // guarded by mu
}

type witnessEntry struct {
	Witness
	endpoint string
	verifier note.Verifier
}

func parseWitness(w Witness) (witnessEntry, error) {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return witnessEntry{}, fmt.Errorf("%w: URL %q: want http(s)://host[:port][/prefix]", ErrInvalidWitness, w.URL)
	}
	v, err := f_note.NewVerifierForCosignatureV1(w.Key)
	if err != nil {
		return witnessEntry{}, fmt.Errorf("%w: key %q: %v", ErrInvalidWitness, w.Key, err)
	}
	return witnessEntry{Witness: w, endpoint: u.JoinPath("add-checkpoint").String(), verifier: v}, nil
}

func loadWitnesses(path string) (*witnessSet, error) {
	ws := &witnessSet{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return ws, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: witnesses: %w", err)
	}
	var list []Witness
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("audit: witnesses %s: %w", path, err)
	}
	for _, w := range list {
		e, err := parseWitness(w)
		if err != nil {
			return nil, fmt.Errorf("audit: witnesses %s: %w", path, err)
		}
		ws.list = append(ws.list, e)
	}
	return ws, nil
}

// save writes list durably; the caller holds mu.
func (ws *witnessSet) save(list []witnessEntry) error {
	out := make([]Witness, 0, len(list))
	for _, e := range list {
		out = append(out, e.Witness)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := keyfile.WriteFile(ws.path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("audit: witnesses: %w", err)
	}
	return nil
}

// Satisfied is tessera's question: does cp carry every witness's
// cosignature?
func (ws *witnessSet) Satisfied(cp []byte) bool {
	ws.mu.Lock()
	list := ws.list
	ws.mu.Unlock()
	for _, e := range list {
		if !cosignedBy(cp, e.verifier) {
			return false
		}
	}
	return true
}

// Endpoints is where tessera sends the checkpoint, and how it checks each
// answer.
func (ws *witnessSet) Endpoints() map[string]note.Verifier {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	m := make(map[string]note.Verifier, len(ws.list))
	for _, e := range ws.list {
		m[e.endpoint] = e.verifier
	}
	return m
}

func cosignedBy(cp []byte, v note.Verifier) bool {
	n, err := note.Open(cp, note.VerifierList(v))
	return err == nil && len(n.Sigs) == 1
}

// AddWitness makes the log hand its checkpoints to w from the next one on,
// and keeps w for the next Open. Adding a witness already there (by URL)
// replaces its key. It returns the witness's status, as Witnesses would
// list it.
func (l *Log) AddWitness(ctx context.Context, w Witness) (WitnessStatus, error) {
	e, err := parseWitness(w)
	if err != nil {
		return WitnessStatus{}, err
	}
	ws := l.witnesses
	ws.mu.Lock()
	list := slices.DeleteFunc(slices.Clone(ws.list), func(x witnessEntry) bool { return x.URL == w.URL })
	list = append(list, e)
	if err := ws.save(list); err != nil {
		ws.mu.Unlock()
		return WitnessStatus{}, err
	}
	ws.list = list
	ws.mu.Unlock()
	l.log.InfoContext(ctx, "audit: witness added: checkpoints from now on go to it", "url", w.URL, "witness", e.verifier.Name())
	cp, err := l.latestCheckpoint(ctx)
	if err != nil {
		return WitnessStatus{}, err
	}
	return e.status(cp), nil
}

// RemoveWitness stops handing checkpoints to the witness at url; false if
// there was none.
func (l *Log) RemoveWitness(ctx context.Context, url string) (bool, error) {
	ws := l.witnesses
	ws.mu.Lock()
	defer ws.mu.Unlock()
	list := slices.DeleteFunc(slices.Clone(ws.list), func(x witnessEntry) bool { return x.URL == url })
	if len(list) == len(ws.list) {
		return false, nil
	}
	if err := ws.save(list); err != nil {
		return false, err
	}
	ws.list = list
	l.log.InfoContext(ctx, "audit: witness removed", "url", url)
	return true, nil
}

// Witnesses lists the configured witnesses, each with whether the latest
// published checkpoint carries its cosignature.
func (l *Log) Witnesses(ctx context.Context) ([]WitnessStatus, error) {
	l.witnesses.mu.Lock()
	list := l.witnesses.list
	l.witnesses.mu.Unlock()
	cp, err := l.latestCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]WitnessStatus, 0, len(list))
	for _, e := range list {
		out = append(out, e.status(cp))
	}
	return out, nil
}

// latestCheckpoint is the published checkpoint, nil before the first.
func (l *Log) latestCheckpoint(ctx context.Context) ([]byte, error) {
	cp, err := l.reader.ReadCheckpoint(ctx)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("audit: read checkpoint: %w", err)
	}
	return cp, nil
}

// status is e's status against the checkpoint cp (nil: none yet).
func (e witnessEntry) status(cp []byte) WitnessStatus {
	return WitnessStatus{Witness: e.Witness, Name: e.verifier.Name(), Cosigned: cp != nil && cosignedBy(cp, e.verifier)}
}

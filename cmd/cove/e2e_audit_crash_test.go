package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cove-dev/cove/api"
	"github.com/cove-dev/cove/internal/audit"
)

var witnessKeyLine = regexp.MustCompile(`verifier_key=(\S+)`)

// startWitness runs 'cove witness serve' for the log with verifier key
// logKey, on loopback, and returns its URL and its verifier key.
func (e *e2e) startWitness(logKey string) (string, string) {
	t := e.t
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(e.cove, "witness", "serve", "--dir", filepath.Join(t.TempDir(), "witness"), "--listen", addr,
		"--name", "witness.test/e2e", "--log", logKey)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	keyc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := witnessKeyLine.FindStringSubmatch(sc.Text()); m != nil {
				keyc <- m[1]
			}
		}
	}()
	select {
	case k := <-keyc:
		return "http://" + addr, k
	case <-time.After(time.Minute):
		t.Fatal("cove witness serve never said its key")
	}
	return "", ""
}

// TestAuditWitnessAndCrash: a real witness ('cove witness serve') co-signs
// the server's checkpoints once 'cove audit witness add' names it. Then
// the server is SIGKILLed: once right after an action's entry is durable
// and before the action (the crash point audit.appended), and several
// times at random moments under a stream of audited writes. After each
// crash, the offline 'cove audit verify' with its state file and the
// witness passes (no gap, no fork, co-signed), every write the server
// acknowledged is in the log, and every secret that exists was announced
// in it; the write killed at audit.appended was logged and did not happen.
func TestAuditWitnessAndCrash(t *testing.T) {
	t.Parallel()
	e := newE2E(t)
	e.startServer()
	m := verifierKeyLine.FindStringSubmatch(e.srv.log.String())
	if m == nil {
		t.Fatalf("the server's log has no verifier key:%s", e.serverLog())
	}
	logKey := m[1]
	wURL, wKey := e.startWitness(logKey)
	if out := e.ok(nil, "audit", "witness", "add", wURL, "--key", wKey); !strings.Contains(out, "witness.test/e2e") {
		t.Fatalf("witness add: %q", out)
	}
	put := func(cl *api.Client, name string) error {
		_, err := cl.PutSecret(context.Background(), name, api.PutSecretRequest{Value: "v-" + name, Hosts: []string{"example.com"}, Header: "Authorization: Bearer {{value}}"})
		return err
	}
	cl := api.NewClient("http://"+e.addr, e.userToken())
	if err := put(cl, "first"); err != nil {
		t.Fatal(err)
	}
	waitCosigned := func() {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			var ws []api.AuditWitness
			if err := json.Unmarshal([]byte(e.ok(nil, "audit", "witness", "ls", "--json")), &ws); err != nil {
				t.Fatal(err)
			}
			if len(ws) == 1 && ws[0].Cosigned {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the witness never co-signed: %+v\n%s", ws, e.serverLog())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitCosigned()

	state := filepath.Join(t.TempDir(), "verified.json")
	dir := filepath.Join(e.home, "audit")
	verify := func(when string) {
		t.Helper()
		out, errOut, code := e.run(nil, "audit", "verify", "--dir", dir, "--key", logKey, "--state", state, "--witness", wKey)
		if code != 0 || !strings.Contains(out, "co-signed by witness.test/e2e") {
			t.Fatalf("%s: audit verify: exit %d: %s%s", when, code, out, errOut)
		}
	}
	// announced returns the names of the secrets whose put was announced.
	announced := func() map[string]bool {
		t.Helper()
		var recs []api.AuditRecord
		if err := json.Unmarshal([]byte(e.ok(nil, "audit", "log", "--json")), &recs); err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, r := range recs {
			en, err := audit.ParseEntry(r.Entry)
			if err != nil {
				t.Fatal(err)
			}
			if en.Action == "secret.put" && en.Decision == audit.Allow {
				out[en.Target.Secret] = true
			}
		}
		return out
	}
	existing := func() map[string]bool {
		t.Helper()
		ss, err := api.NewClient("http://"+e.addr, e.userToken()).ListSecrets(context.Background(), api.SecretOwner{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, s := range ss {
			out[s.Name] = true
		}
		return out
	}

	// Killed after the entry is durable, before the action.
	e.crashAt("audit.appended", func() {
		if err := put(api.NewClient("http://"+e.addr, e.userToken()), "killed"); err == nil {
			t.Error("the put killed at audit.appended succeeded")
		}
	})
	if !announced()["killed"] {
		t.Fatal("the put killed after its entry was durable is not in the log")
	}
	if existing()["killed"] {
		t.Fatal("the put killed before it acted happened")
	}
	e.stopServer(syscall.SIGKILL)
	verify("after the crash at audit.appended")
	e.startServer()

	// Killed at random moments under a stream of writes.
	for round := range 3 {
		var mu sync.Mutex
		acked := map[string]bool{}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cl := api.NewClient("http://"+e.addr, e.userToken())
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					name := fmt.Sprintf("r%d-w%d-%d", round, w, i)
					if err := put(cl, name); err != nil {
						return // the server is gone
					}
					mu.Lock()
					acked[name] = true
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(200+mrand.IntN(800)) * time.Millisecond)
		if err := e.stopServer(syscall.SIGKILL); err != nil && !strings.Contains(err.Error(), "killed") {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()
		verify(fmt.Sprintf("round %d, after SIGKILL with %d writes acknowledged", round, len(acked)))
		e.startServer()
		ann, have := announced(), existing()
		for name := range acked {
			if !ann[name] {
				t.Errorf("round %d: the acknowledged put %s is not in the log", round, name)
			}
			if !have[name] {
				t.Errorf("round %d: the acknowledged put %s is lost", round, name)
			}
		}
		for name := range have {
			if !ann[name] {
				t.Errorf("round %d: secret %s exists, and its put is not in the log", round, name)
			}
		}
		if len(acked) == 0 {
			t.Errorf("round %d: no write was acknowledged before the kill", round)
		}
		t.Logf("round %d: %d writes acknowledged before SIGKILL, all logged", round, len(acked))
	}
	waitCosigned()
	e.stopServer(syscall.SIGTERM)
	verify("at the end")
}

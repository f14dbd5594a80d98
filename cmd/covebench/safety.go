package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// The crash-safety and fault figures are not measured here: they come
// from the tests that hold them (TestCrashPoints, TestCrashRandom, the
// fault tests, TestLoad), read back from the go test -json record the
// last 'make test' kept (TESTJSON, $TMPDIR/cove-test.json by default).
// Running them again would take the bench as long as the suite.

// faultTests are the tests of issue 12's faults, by the fault they hold.
var faultTests = []struct{ test, fault string }{
	{"TestParkDiskFull", "disk full during a park"},
	{"TestQEMUKilled", "QEMU killed: save, restore, running"},
	{"TestSnapshotDamaged", "state or RAM file truncated or changed"},
	{"TestSnapshotMissing", "state or RAM file missing"},
	{"TestGuestFrozen", "QEMU frozen (SIGSTOP)"},
	{"TestGuestFreezesItsAgent", "agent frozen inside the guest"},
	{"TestGuestGarblesItsStream", "garbage on the agent's stream"},
	{"TestUnavailableWhileLockedByAnotherProcess", "state store locked by another process"},
	{"TestUnavailableWhileReadOnly", "state store read-only"},
	{"TestServerRefusesHomeQEMUCannotReach", "a home QEMU's user cannot reach"},
}

// testEvent is the part of a go test -json line read here.
type testEvent struct {
	Action, Package, Test, Output string
}

var (
	crashWalkedRe = regexp.MustCompile(`crash points walked: (\d+):`)
	randomKillsRe = regexp.MustCompile(`random kills: (\d+) of (\d+) survived; (\d+) of them cut an operation short`)
	loadRe        = regexp.MustCompile(`load summary: (\d+) clients, (\d+) sessions, (\S+): (\d+) ops .*failures (\d+) \(5xx (\d+)\); leaked objects (\d+) .*server RSS (\S+ MiB) at start, (\S+ MiB) at end \(peak (\S+ MiB)`)
)

// safetyRows reads the test record at path into rows.
func safetyRows(path string) ([]row, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safety figures: %w (run 'make test' first: it keeps its record there; TESTJSON moves it)", err)
	}
	defer f.Close()
	result := map[string]string{} // top-level test → pass, fail or skip
	var walked, kills, load []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev testEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Test == "" || strings.Contains(ev.Test, "/") {
			continue
		}
		switch ev.Action {
		case "pass", "fail", "skip":
			result[ev.Test] = ev.Action
		case "output":
			if m := crashWalkedRe.FindStringSubmatch(ev.Output); m != nil && ev.Test == "TestCrashPoints" {
				walked = m
			}
			if m := randomKillsRe.FindStringSubmatch(ev.Output); m != nil {
				kills = m
			}
			if m := loadRe.FindStringSubmatch(ev.Output); m != nil {
				load = m
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("safety figures: %s: %w", path, err)
	}
	src := "from " + filepath.Base(path)
	if fi, err := os.Stat(path); err == nil {
		src += " of " + fi.ModTime().UTC().Format("2006-01-02 15:04")
	}
	cell := func(name, n, value, target, verdict string) row {
		return row{name: name, cells: []string{n, value, "–", target, verdict}}
	}
	held := func(test string) string {
		switch result[test] {
		case "pass":
			return "held"
		case "":
			return "not run"
		}
		return result[test] + "ed"
	}
	var rows []row
	if walked != nil {
		rows = append(rows, cell("crash points: SIGKILL of the server at each named step ("+src+")", walked[1],
			fmt.Sprintf("%s/%s survived", ifPass(result["TestCrashPoints"], walked[1]), walked[1]), "all", held("TestCrashPoints")))
	} else {
		rows = append(rows, cell("crash points ("+src+")", "–", "no record", "all", held("TestCrashPoints")))
	}
	if kills != nil {
		rows = append(rows, cell("random SIGKILLs during park/wake/clone ("+kills[3]+" cut an operation)", kills[2],
			kills[1]+"/"+kills[2]+" survived", "≥ 100, all", held("TestCrashRandom")))
	} else {
		rows = append(rows, cell("random SIGKILLs during park/wake/clone", "–", "no record", "≥ 100, all", held("TestCrashRandom")))
	}
	passed := 0
	var failed []string
	for _, ft := range faultTests {
		if result[ft.test] == "pass" {
			passed++
		} else {
			failed = append(failed, ft.fault+" ("+held(ft.test)+")")
		}
	}
	verdict := "held"
	if len(failed) > 0 {
		slices.Sort(failed)
		verdict = "not: " + strings.Join(failed, "; ")
	}
	rows = append(rows, cell("faults survived (disk full, QEMU killed, damaged or missing snapshot, frozen guest, DB unavailable, …)",
		fmt.Sprint(len(faultTests)), fmt.Sprintf("%d/%d", passed, len(faultTests)), "all", verdict))
	if load != nil {
		rows = append(rows, cell(fmt.Sprintf("load: %s clients on %s sessions for %s: failures, leaked objects, server RSS", load[1], load[2], load[3]), load[4]+" ops",
			fmt.Sprintf("%s failures (%s 5xx), %s leaked; RSS %s → %s (peak %s)", load[5], load[6], load[7], load[8], load[9], load[10]),
			"0, 0, flat", held("TestLoad")))
	}
	return rows, nil
}

// ifPass is n when the test passed (every point survived), else "<n".
func ifPass(result, n string) string {
	if result == "pass" {
		return n
	}
	return "<" + n
}

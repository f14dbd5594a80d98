package trigger_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/cove-dev/cove/internal/trigger"
)

// idxSub makes a subscription from expression strings.
func idxSub(id string, exprs ...string) trigger.Subscription {
	sub := trigger.Subscription{ID: id}
	for _, s := range exprs {
		sub.Exprs = append(sub.Exprs, trigger.MustParse(s))
	}
	return sub
}

// idxBruteMatch is what Index.Match must return: every subscription one of
// whose expressions matches, sorted.
func idxBruteMatch(subs map[string]trigger.Subscription, ev trigger.Event) []string {
	var ids []string
	for id, sub := range subs {
		for _, e := range sub.Exprs {
			if e.Match(ev) {
				ids = append(ids, id)
				break
			}
		}
	}
	slices.Sort(ids)
	return ids
}

func TestIndexMatch(t *testing.T) {
	var x trigger.Index // the zero Index is ready
	if got := x.Match(trigger.Event{Source: "github", Name: "push"}); got != nil {
		t.Fatalf("empty index matched %v", got)
	}
	x.Add(idxSub("ci", "github:check_suite.completed repo=acme/api head_sha=abc"))
	x.Add(idxSub("any-action", "github:check_suite repo=acme/api"))
	x.Add(idxSub("both", "github:check_suite.completed repo=acme/api", "github:push repo=acme/api"))
	x.Add(idxSub("no-key", "github:check_suite.completed head_sha=*"))
	x.Add(idxSub("other-repo", "github:check_suite.completed repo=acme/web"))
	x.Add(idxSub("pr-only", "github:check_suite.completed pr=42"))
	x.Add(idxSub("deploy", "webhook:deploy-done env=staging", "webhook:deploy-done service.name=api"))
	x.Add(idxSub("empty")) // no expressions: matches nothing
	x.Add(trigger.Subscription{ID: "zero", Exprs: []trigger.Expr{{}}})

	cs := trigger.Event{Source: "github", Name: "check_suite.completed",
		Fields: map[string]string{"repo": "acme/api", "head_sha": "abc", "pr": "42"}}
	for _, tc := range []struct {
		ev   trigger.Event
		want []string
	}{
		{cs, []string{"any-action", "both", "ci", "no-key", "pr-only"}},
		{trigger.Event{Source: "github", Name: "check_suite.requested", Fields: map[string]string{"repo": "acme/api"}}, []string{"any-action"}},
		{trigger.Event{Source: "github", Name: "check_suite", Fields: map[string]string{"repo": "acme/api"}}, []string{"any-action"}},
		{trigger.Event{Source: "github", Name: "push", Fields: map[string]string{"repo": "acme/api"}}, []string{"both"}},
		{trigger.Event{Source: "github", Name: "push", Fields: map[string]string{"repo": "acme/web"}}, nil},
		{trigger.Event{Source: "webhook", Name: "deploy-done", Body: []byte(`{"env":"staging","service":{"name":"api"}}`)}, []string{"deploy"}},
		{trigger.Event{Source: "webhook", Name: "deploy-done", Body: []byte(`{"service":{"name":"api"}}`)}, []string{"deploy"}},
		{trigger.Event{Source: "webhook", Name: "deploy-done", Body: []byte(`{"env":"prod"}`)}, nil},
		{trigger.Event{Source: "other", Name: "deploy-done", Body: []byte(`{"env":"staging"}`)}, nil},
	} {
		if got := x.Match(tc.ev); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Match(%s %s %v %s) = %v, want %v", tc.ev.Source, tc.ev.Name, tc.ev.Fields, tc.ev.Body, got, tc.want)
		}
	}
	if n := x.Len(); n != 9 {
		t.Errorf("Len() = %d, want 9", n)
	}

	// Add with a known ID replaces; Remove forgets; removing twice is fine.
	x.Add(idxSub("ci", "github:push repo=acme/api"))
	x.Remove("no-key")
	x.Remove("no-key")
	x.Remove("never-added")
	if got, want := x.Match(cs), []string{"any-action", "both", "pr-only"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after replace and remove: Match = %v, want %v", got, want)
	}
	for _, id := range []string{"ci", "any-action", "both", "other-repo", "pr-only", "deploy", "empty", "zero"} {
		x.Remove(id)
	}
	if n := x.Len(); n != 0 {
		t.Errorf("Len() = %d after removing everything", n)
	}
	if got := x.Match(cs); got != nil {
		t.Errorf("emptied index matched %v", got)
	}
}

// The index returns exactly what checking every subscription returns, for
// random subscriptions and events, also after removals and replacements.
func TestIndexMatchesBruteForce(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 0x7269676765))
			subs := map[string]trigger.Subscription{}
			var x trigger.Index
			add := func(id string) {
				sub := trigger.Subscription{ID: id}
				for range 1 + r.IntN(3) {
					s := idxRandExpr(r)
					e, err := trigger.Parse(s)
					if err != nil {
						t.Fatalf("Parse(%q): %v", s, err)
					}
					sub.Exprs = append(sub.Exprs, e)
				}
				subs[id] = sub
				x.Add(sub)
			}
			check := func(phase string) {
				t.Helper()
				matched := 0
				for range 400 {
					ev := idxRandEvent(r)
					got, want := x.Match(ev), idxBruteMatch(subs, ev)
					if !reflect.DeepEqual(got, want) {
						t.Fatalf("%s: event %s %s %v %s:\nindex %v\nscan  %v", phase, ev.Source, ev.Name, ev.Fields, ev.Body, got, want)
					}
					matched += len(want)
				}
				if matched == 0 {
					t.Fatalf("%s: no event matched anything; the generator is too sparse", phase)
				}
			}
			for i := range 300 {
				add(fmt.Sprintf("s%03d", i))
			}
			check("after adding")
			for i := range 300 {
				id := fmt.Sprintf("s%03d", i)
				switch r.IntN(3) {
				case 0:
					delete(subs, id)
					x.Remove(id)
				case 1:
					add(id) // replaces
				}
			}
			check("after removing and replacing")
			if x.Len() != len(subs) {
				t.Errorf("Len() = %d, want %d", x.Len(), len(subs))
			}
		})
	}
}

var (
	idxSources      = []string{"github", "ci", "deploy"}
	idxGitHubEvents = []string{"check_suite", "check_suite.completed", "check_suite.requested", "push", "issue_comment", "issue_comment.created"}
	idxGitHubNames  = []string{"check_suite", "check_suite.completed", "check_suite.requested", "check_suite.rerequested", "push", "issue_comment.created", "issue_comment.edited", "ping"}
	idxHookEvents   = []string{"done", "build.done", "ci", "deploy"}
	idxGitHubKeys   = []string{"repo", "pr", "issue", "head_sha", "branch", "conclusion", "a.b", "items.0", "env"}
	idxHookKeys     = []string{"env", "a.b", "items.0", "items.1", "n", "repo"}
	idxValues       = []string{"x", "y", "1", "true"}
)

func idxPick(r *rand.Rand, from []string) string { return from[r.IntN(len(from))] }

// idxRandExpr writes a random expression over a small vocabulary, so that
// events often match.
func idxRandExpr(r *rand.Rand) string {
	src := idxPick(r, idxSources)
	events, keys := idxHookEvents, idxHookKeys
	if src == "github" {
		events, keys = idxGitHubEvents, idxGitHubKeys
	}
	s := src + ":" + idxPick(r, events)
	for _, i := range r.Perm(len(keys))[:r.IntN(4)] {
		v := idxPick(r, idxValues)
		if r.IntN(6) == 0 {
			v = "*"
		}
		s += " " + keys[i] + "=" + v
	}
	return s
}

// idxRandEvent makes a random event: GitHub ones with random fields, all
// with a random body whose scalars are strings, numbers, booleans or null.
func idxRandEvent(r *rand.Rand) trigger.Event {
	ev := trigger.Event{Source: idxPick(r, idxSources), Fields: map[string]string{}}
	if ev.Source == "github" {
		ev.Name = idxPick(r, idxGitHubNames)
		for _, k := range []string{"repo", "pr", "issue", "head_sha", "branch", "conclusion"} {
			if r.IntN(3) > 0 {
				ev.Fields[k] = idxPick(r, idxValues)
			}
		}
	} else {
		ev.Name = idxPick(r, idxHookEvents)
	}
	scalar := func() any {
		switch r.IntN(6) {
		case 0:
			return 1
		case 1:
			return true
		case 2:
			return nil
		}
		return idxPick(r, idxValues)
	}
	body := map[string]any{}
	for _, k := range []string{"env", "n", "repo"} {
		if r.IntN(3) > 0 {
			body[k] = scalar()
		}
	}
	if r.IntN(3) > 0 {
		body["a"] = map[string]any{"b": scalar()}
	}
	if r.IntN(3) > 0 {
		body["items"] = []any{scalar(), scalar()}
	}
	ev.Body, _ = json.Marshal(body)
	return ev
}

// Match, Add and Remove may run at once (run with -race).
func TestIndexConcurrentUse(t *testing.T) {
	var x trigger.Index
	ev := trigger.Event{Source: "github", Name: "push", Fields: map[string]string{"repo": "acme/api"}}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				id := fmt.Sprintf("w%d-%d", w, i%10)
				x.Add(idxSub(id, "github:push repo=acme/api"))
				if got := x.Match(ev); !slices.Contains(got, id) {
					t.Errorf("Match right after Add(%s) = %v", id, got)
					return
				}
				x.Remove(id)
			}
		})
	}
	wg.Wait()
	if x.Len() != 0 {
		t.Errorf("Len() = %d after all removals", x.Len())
	}
}

// idxBenchRepo names repository n of the benchmark, in one of 37 orgs.
func idxBenchRepo(n int) string { return fmt.Sprintf("org%d/repo%d", n%37, n) }

// BenchmarkMatch matches events against 10,000 subscriptions spread over
// 1,000 repositories, each waiting for CI, a review or a comment on its
// pull request, and 500 generic-hook subscriptions besides. The target is
// at most 1 ms per Match.
func BenchmarkMatch(b *testing.B) {
	const (
		repos = 1000
		subs  = 10000
	)
	var x trigger.Index
	sha := func(i int) string { return fmt.Sprintf("%040x", uint64(i)*0x9e3779b97f4a7c15) }
	for i := range subs {
		repo := idxBenchRepo(i % repos)
		x.Add(idxSub(fmt.Sprintf("sess-%05d", i),
			fmt.Sprintf("github:check_suite.completed repo=%s head_sha=%s", repo, sha(i)),
			fmt.Sprintf("github:pull_request_review.submitted repo=%s pr=%d", repo, i),
			fmt.Sprintf("github:issue_comment repo=%s issue=%d", repo, i),
		))
	}
	for i := range 500 {
		x.Add(idxSub(fmt.Sprintf("hook-%03d", i), fmt.Sprintf("deploy:deploy-done env=staging-%d service.name=api", i)))
	}
	body := exprFixture(b, "check_suite-completed")
	var events []trigger.Event
	for i := 0; i < subs; i += 97 {
		repo := idxBenchRepo(i % repos)
		events = append(events,
			trigger.Event{Source: "github", Name: "check_suite.completed", Body: body,
				Fields: map[string]string{"repo": repo, "head_sha": sha(i), "branch": "agent/fix-7", "conclusion": "success", "status": "completed", "sender": "mara-dev"}},
			trigger.Event{Source: "github", Name: "issue_comment.created", Body: body,
				Fields: map[string]string{"repo": repo, "issue": fmt.Sprint(i), "pr": fmt.Sprint(i), "comment_id": "2512345678", "author": "mara-dev"}},
			trigger.Event{Source: "deploy", Name: "deploy-done",
				Body: fmt.Appendf(nil, `{"event":"deploy-done","env":"staging-%d","service":{"name":"api","version":"1.4.2"}}`, i%500)},
		)
	}
	for _, ev := range events {
		if len(x.Match(ev)) != 1 {
			b.Fatalf("event %s %v %s matched %v, want one subscription", ev.Name, ev.Fields, ev.Body, x.Match(ev))
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		x.Match(events[i%len(events)])
	}
}

// BenchmarkMatchOneRepo has 10,000 subscriptions in one repository (a busy
// monorepo): the index tells them apart by head_sha, the second condition
// they are filed under, so Match still checks only one.
func BenchmarkMatchOneRepo(b *testing.B) {
	var x trigger.Index
	for i := range 10000 {
		x.Add(idxSub(fmt.Sprintf("sess-%05d", i),
			fmt.Sprintf("github:check_suite.completed repo=acme/api head_sha=%040x", i)))
	}
	ev := trigger.Event{Source: "github", Name: "check_suite.completed",
		Fields: map[string]string{"repo": "acme/api", "head_sha": fmt.Sprintf("%040x", 4242)}}
	if got := x.Match(ev); !reflect.DeepEqual(got, []string{"sess-04242"}) {
		b.Fatalf("Match = %v", got)
	}
	b.ReportAllocs()
	for b.Loop() {
		x.Match(ev)
	}
}

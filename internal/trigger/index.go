package trigger

import (
	"slices"
	"strings"
	"sync"
)

// Subscription is what a parked session waits for: it matches an event
// when any of its expressions does.
type Subscription struct {
	ID    string
	Exprs []Expr
}

// Index holds subscriptions and finds those an event matches without
// looking at the others. It is safe for concurrent use; the zero Index is
// empty and ready.
//
// Expressions are filed under their source and event name, and there under
// up to two of their equality conditions, nested: for github the first two
// of repo, pr, issue, head_sha and branch that the expression has (in that
// order), then its other KEY=VALUE conditions as written; for a generic
// hook its first two KEY=VALUE conditions. Match visits the expressions
// under the event's source and name (for github also under the name
// without action) whose filed conditions the event satisfies, plus those
// filed under fewer conditions on the way, and checks each in full. An
// event thus costs about as many checks as there are expressions that
// share its filed values: one busy repository's many subscriptions are
// told apart by their pr, issue, head_sha or branch.
type Index struct {
	mu sync.RWMutex
	// subs places each subscription's expressions; guarded by mu.
	subs map[string][]indexPlace
	// slots holds the expressions by source and event; guarded by mu.
	slots map[indexSlotKey]*indexNode
}

type indexSlotKey struct{ source, event string }

// indexDepth is the most conditions an expression is filed under.
const indexDepth = 2

// indexNode holds expressions filed under the same conditions.
type indexNode struct {
	here  []indexEntry                     // filed under no further condition
	below map[string]map[string]*indexNode // key → value → expressions filed under KEY=VALUE too
}

func (n *indexNode) empty() bool { return len(n.here) == 0 && len(n.below) == 0 }

type indexEntry struct {
	id   string
	expr Expr
}

// indexPlace is where one expression of a subscription is filed.
type indexPlace struct {
	slot indexSlotKey
	path []exprCond // the equality conditions it is filed under
}

// indexKeys are the github fields an expression is filed under first, most
// selective first.
var indexKeys = []string{"repo", "pr", "issue", "head_sha", "branch"}

// indexPath returns the equality conditions e is filed under.
func (e Expr) indexPath() []exprCond {
	var path []exprCond
	has := func(key string) bool {
		return slices.ContainsFunc(path, func(c exprCond) bool { return c.key == key })
	}
	if e.source == sourceGitHub {
		for _, k := range indexKeys {
			for _, c := range e.conds {
				if c.key == k && !c.present && len(path) < indexDepth {
					path = append(path, c)
				}
			}
		}
	}
	for _, c := range e.conds {
		if !c.present && len(path) < indexDepth && !has(c.key) {
			path = append(path, c)
		}
	}
	return path
}

// Add adds sub, replacing the subscription of the same ID if there is one.
// Zero Exprs (which match nothing) are left out.
func (x *Index) Add(sub Subscription) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(sub.ID)
	if x.subs == nil {
		x.subs = make(map[string][]indexPlace)
		x.slots = make(map[indexSlotKey]*indexNode)
	}
	places := make([]indexPlace, 0, len(sub.Exprs))
	for _, e := range sub.Exprs {
		if e.source == "" {
			continue
		}
		pl := indexPlace{slot: indexSlotKey{e.source, e.event}, path: e.indexPath()}
		n := x.slots[pl.slot]
		if n == nil {
			n = &indexNode{}
			x.slots[pl.slot] = n
		}
		for _, c := range pl.path {
			if n.below == nil {
				n.below = make(map[string]map[string]*indexNode)
			}
			byValue := n.below[c.key]
			if byValue == nil {
				byValue = make(map[string]*indexNode)
				n.below[c.key] = byValue
			}
			next := byValue[c.value]
			if next == nil {
				next = &indexNode{}
				byValue[c.value] = next
			}
			n = next
		}
		n.here = append(n.here, indexEntry{id: sub.ID, expr: e})
		places = append(places, pl)
	}
	x.subs[sub.ID] = places
}

// Remove removes the subscription with the given ID, if there is one.
func (x *Index) Remove(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(id)
}

func (x *Index) removeLocked(id string) {
	places, ok := x.subs[id]
	if !ok {
		return
	}
	delete(x.subs, id)
	for _, pl := range places {
		if n := x.slots[pl.slot]; n != nil && n.remove(id, pl.path) {
			delete(x.slots, pl.slot)
		}
	}
}

// remove removes id's entries filed under path below n, prunes the nodes
// it empties, and reports whether n is empty.
func (n *indexNode) remove(id string, path []exprCond) bool {
	if len(path) == 0 {
		n.here = slices.DeleteFunc(n.here, func(ent indexEntry) bool { return ent.id == id })
		return n.empty()
	}
	c := path[0]
	byValue := n.below[c.key]
	if next := byValue[c.value]; next != nil && next.remove(id, path[1:]) {
		delete(byValue, c.value)
		if len(byValue) == 0 {
			delete(n.below, c.key)
		}
	}
	return n.empty()
}

// Len returns the number of subscriptions.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.subs)
}

// Match returns the IDs of the subscriptions ev matches, each once, in
// sorted order; nil when there are none. It returns exactly the
// subscriptions one of whose Exprs' Match(ev) is true.
func (x *Index) Match(ev Event) []string {
	v := eventView{ev: &ev}
	x.mu.RLock()
	defer x.mu.RUnlock()
	var ids []string
	ids = x.matchSlot(indexSlotKey{ev.Source, ev.Name}, &v, ids)
	if ev.Source == sourceGitHub {
		if name, _, ok := strings.Cut(ev.Name, "."); ok {
			ids = x.matchSlot(indexSlotKey{ev.Source, name}, &v, ids)
		}
	}
	if len(ids) > 1 {
		slices.Sort(ids)
		ids = slices.Compact(ids)
	}
	return ids
}

// matchSlot appends to ids those of the slot's expressions that v matches.
func (x *Index) matchSlot(k indexSlotKey, v *eventView, ids []string) []string {
	if n := x.slots[k]; n != nil {
		ids = n.match(v, ids)
	}
	return ids
}

// match appends to ids those of the expressions at and below n that v
// matches.
func (n *indexNode) match(v *eventView, ids []string) []string {
	for _, ent := range n.here {
		if ent.expr.match(v) {
			ids = append(ids, ent.id)
		}
	}
	for key, byValue := range n.below {
		value, p := v.value(key)
		if p != valueScalar {
			continue
		}
		if next := byValue[value]; next != nil {
			ids = next.match(v, ids)
		}
	}
	return ids
}

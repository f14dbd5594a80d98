package trigger

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits of an expression.
const (
	MaxExprLen        = 1024 // bytes
	MaxExprConditions = 16
	maxHookName       = 64
)

// Expr is a parsed trigger expression: a source, an event name and
// conditions on the event's fields or body. The zero Expr matches nothing.
// An Expr is immutable and safe for concurrent use.
type Expr struct {
	source string
	event  string
	conds  []exprCond
}

// exprCond is one KEY=VALUE of an expression.
type exprCond struct {
	key     string
	value   string
	present bool // KEY=*: any value; value is empty
}

// ParseError is a malformed expression: Msg says what is wrong at byte
// offset Pos of Input.
type ParseError struct {
	Input string
	Pos   int
	Msg   string
}

// Error shows the message, then the expression (or, when long, the part
// around Pos) and a caret under the offending column:
//
//	trigger: expression: expected '=' after key "repo" (column 34)
//	    github:check_suite.completed repo
//	                                     ^
func (e *ParseError) Error() string {
	line, col := parseErrorExcerpt(e.Input, e.Pos)
	return fmt.Sprintf("trigger: expression: %s (column %d)\n    %s\n    %s^",
		e.Msg, utf8.RuneCountInString(e.Input[:min(max(e.Pos, 0), len(e.Input))])+1,
		line, strings.Repeat(" ", col))
}

// parseErrorExcerpt returns the printable part of s shown under an error
// at pos, and the column of pos in it. Unprintable runes show as '?'; an
// expression over 80 runes is cut to 40 either side of pos, marked "...".
func parseErrorExcerpt(s string, pos int) (string, int) {
	pos = min(max(pos, 0), len(s))
	var runes []rune
	col := -1
	for i, r := range s {
		if i >= pos && col < 0 {
			col = len(runes)
		}
		if !unicode.IsPrint(r) || r == utf8.RuneError {
			r = '?'
		}
		runes = append(runes, r)
	}
	if col < 0 {
		col = len(runes)
	}
	const window = 40
	if len(runes) <= 2*window {
		return string(runes), col
	}
	lo, hi := max(col-window, 0), min(col+window, len(runes))
	prefix, suffix := "", ""
	if lo > 0 {
		prefix = "..."
	}
	if hi < len(runes) {
		suffix = "..."
	}
	return prefix + string(runes[lo:hi]) + suffix, col - lo + len(prefix)
}

// Parse parses a trigger expression:
//
//	SOURCE:EVENT [KEY=VALUE]...
//
// separated by one or more spaces (leading and trailing spaces are
// ignored), where
//
//	SOURCE  github, or a hook name: [a-z0-9][a-z0-9_-]{0,63}
//	EVENT   [a-z0-9_.-]+ without empty dot-separated parts; for github NAME
//	        or NAME.ACTION, and NAME alone matches any action
//	KEY     a field name or a dotted path into the JSON body, parts
//	        [A-Za-z0-9_-]+; a number indexes an array (items.0.id)
//	VALUE   a bare word: printable, no space, ", \ or *;
//	        or "a quoted string" with \" and \\ escapes;
//	        or * alone: the key is present
//
// All conditions must hold; values compare as strings (numbers in shortest
// form, booleans as true and false); a key appears at most once. The
// package doc says how keys are looked up and values compared. An
// expression is at most MaxExprLen bytes with at most MaxExprConditions
// conditions.
//
// An error is a *ParseError.
func Parse(s string) (Expr, error) {
	p := exprParser{s: s}
	return p.parse()
}

// MustParse is Parse that panics on error, for expressions fixed in code.
func MustParse(s string) Expr {
	e, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return e
}

type exprParser struct {
	s string
	i int // next byte
}

func (p *exprParser) fail(pos int, format string, args ...any) error {
	return &ParseError{Input: p.s, Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

// found describes what is at pos, for messages: ", found ':'".
func (p *exprParser) found(pos int) string {
	if pos >= len(p.s) {
		return ""
	}
	r, _ := utf8.DecodeRuneInString(p.s[pos:])
	return fmt.Sprintf(", found %q", r)
}

func (p *exprParser) atEnd() bool { return p.i >= len(p.s) }

// atSep reports whether the parser is at the end or at a space.
func (p *exprParser) atSep() bool { return p.atEnd() || p.s[p.i] == ' ' }

func (p *exprParser) skipSpaces() {
	for !p.atEnd() && p.s[p.i] == ' ' {
		p.i++
	}
}

// scan advances over bytes for which ok holds and returns them.
func (p *exprParser) scan(ok func(byte) bool) string {
	start := p.i
	for !p.atEnd() && ok(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

func isSourceByte(c byte) bool { return isLowerAlnum(c) || c == '_' || c == '-' }
func isEventByte(c byte) bool  { return isSourceByte(c) || c == '.' }
func isKeyByte(c byte) bool {
	return isEventByte(c) || 'A' <= c && c <= 'Z'
}

func (p *exprParser) parse() (Expr, error) {
	s := p.s
	if len(s) > MaxExprLen {
		return Expr{}, p.fail(MaxExprLen, "expression longer than %d bytes", MaxExprLen)
	}
	for i, r := range s {
		if r == utf8.RuneError {
			if _, n := utf8.DecodeRuneInString(s[i:]); n == 1 {
				return Expr{}, p.fail(i, "invalid UTF-8")
			}
		}
	}
	p.skipSpaces()
	if p.atEnd() {
		return Expr{}, p.fail(p.i, "empty expression; want SOURCE:EVENT [KEY=VALUE]...")
	}
	var e Expr
	var err error
	if e.source, err = p.parseSource(); err != nil {
		return Expr{}, err
	}
	if e.event, err = p.parseEvent(e.source); err != nil {
		return Expr{}, err
	}
	for {
		p.skipSpaces()
		if p.atEnd() {
			return e, nil
		}
		if len(e.conds) == MaxExprConditions {
			return Expr{}, p.fail(p.i, "more than %d conditions", MaxExprConditions)
		}
		c, err := p.parseCond(e.conds)
		if err != nil {
			return Expr{}, err
		}
		e.conds = append(e.conds, c)
	}
}

// parseSource parses SOURCE and the colon after it.
func (p *exprParser) parseSource() (string, error) {
	start := p.i
	src := p.scan(isSourceByte)
	switch {
	case src == "" && !p.atEnd() && p.s[p.i] == ':':
		return "", p.fail(p.i, "expected source (github or a hook name) before ':'")
	case src == "":
		return "", p.fail(p.i, "expected source (github or a hook name)%s", p.found(p.i))
	case !isLowerAlnum(src[0]):
		return "", p.fail(start, "source must start with a-z or 0-9")
	case len(src) > maxHookName:
		return "", p.fail(start+maxHookName, "hook name longer than %d characters", maxHookName)
	case p.atSep():
		return "", p.fail(p.i, "expected ':' after source %q", src)
	case p.s[p.i] != ':':
		return "", p.fail(p.i, "invalid character %s in source (want a-z, 0-9, _ or -, then ':')", p.quoteAt(p.i))
	}
	p.i++ // ':'
	return src, nil
}

// quoteAt quotes the rune at pos.
func (p *exprParser) quoteAt(pos int) string {
	r, _ := utf8.DecodeRuneInString(p.s[pos:])
	return fmt.Sprintf("%q", r)
}

// parseEvent parses EVENT.
func (p *exprParser) parseEvent(source string) (string, error) {
	start := p.i
	ev := p.scan(isEventByte)
	if !p.atSep() {
		return "", p.fail(p.i, "invalid character %s in event name (want a-z, 0-9, _, - or .)", p.quoteAt(p.i))
	}
	if ev == "" {
		return "", p.fail(p.i, "expected event name after ':'")
	}
	dots := 0
	for i := 0; i < len(ev); i++ {
		if ev[i] != '.' {
			continue
		}
		if i == 0 || i == len(ev)-1 || ev[i+1] == '.' {
			pos := start + i
			if i > 0 && i < len(ev)-1 {
				pos++ // the second of two dots
			}
			return "", p.fail(pos, "empty part in event name %q", ev)
		}
		if dots++; dots == 2 && source == sourceGitHub {
			return "", p.fail(start+i, "github event is NAME or NAME.ACTION, not %q", ev)
		}
	}
	return ev, nil
}

// parseCond parses one KEY=VALUE; prev are the conditions before it.
func (p *exprParser) parseCond(prev []exprCond) (exprCond, error) {
	start := p.i
	key := p.scan(isKeyByte)
	if key == "" {
		return exprCond{}, p.fail(p.i, "expected KEY=VALUE%s", p.found(p.i))
	}
	if p.atEnd() || p.s[p.i] != '=' {
		return exprCond{}, p.fail(p.i, "expected '=' after key %q%s", key, p.found(p.i))
	}
	for i := 0; i < len(key); i++ {
		if key[i] == '.' && (i == 0 || i == len(key)-1 || key[i+1] == '.') {
			pos := start + i
			if i > 0 && i < len(key)-1 {
				pos++
			}
			return exprCond{}, p.fail(pos, "empty part in key path %q", key)
		}
	}
	for _, c := range prev {
		if c.key == key {
			return exprCond{}, p.fail(start, "duplicate key %q", key)
		}
	}
	p.i++ // '='
	c := exprCond{key: key}
	var err error
	switch {
	case p.atSep():
		return exprCond{}, p.fail(p.i, "expected value after %q (a word, a \"quoted string\" or *)", key+"=")
	case p.s[p.i] == '"':
		c.value, err = p.parseQuoted()
	case p.s[p.i] == '*' && (p.i+1 == len(p.s) || p.s[p.i+1] == ' '):
		p.i++
		c.present = true
	default:
		c.value, err = p.parseBare()
	}
	return c, err
}

// parseQuoted parses a double-quoted string and requires a separator after it.
func (p *exprParser) parseQuoted() (string, error) {
	open := p.i
	p.i++
	var b strings.Builder
	for {
		if p.atEnd() {
			return "", p.fail(open, "unterminated quoted value")
		}
		r, n := utf8.DecodeRuneInString(p.s[p.i:])
		switch {
		case r == '"':
			p.i++
			if !p.atSep() {
				return "", p.fail(p.i, "expected space after quoted value%s", p.found(p.i))
			}
			return b.String(), nil
		case r == '\\':
			if p.i+1 >= len(p.s) {
				return "", p.fail(open, "unterminated quoted value")
			}
			if c := p.s[p.i+1]; c != '"' && c != '\\' {
				return "", p.fail(p.i, `unknown escape \%c in quoted value (only \" and \\)`, rune(c))
			}
			b.WriteByte(p.s[p.i+1])
			p.i += 2
			continue
		case !unicode.IsPrint(r):
			return "", p.fail(p.i, "unprintable character %U in quoted value", r)
		}
		b.WriteString(p.s[p.i : p.i+n])
		p.i += n
	}
}

// parseBare parses a bare word up to the next space or the end.
func (p *exprParser) parseBare() (string, error) {
	start := p.i
	for !p.atSep() {
		r, n := utf8.DecodeRuneInString(p.s[p.i:])
		switch {
		case r == '"':
			return "", p.fail(p.i, "unexpected '\"' in value; quote the whole value")
		case r == '\\':
			return "", p.fail(p.i, `unexpected '\' in unquoted value; quote the value and write \\`)
		case r == '*':
			return "", p.fail(p.i, "'*' alone means any value; quote a value that contains '*'")
		case !unicode.IsPrint(r):
			return "", p.fail(p.i, "unprintable character %U in value", r)
		}
		p.i += n
	}
	return p.s[start:p.i], nil
}

// isBareWord reports whether v can be written without quotes.
func isBareWord(v string) bool {
	if v == "" {
		return false
	}
	for _, r := range v {
		if r == ' ' || r == '"' || r == '\\' || r == '*' || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// String returns the expression in canonical form: single spaces,
// conditions in their written order, values bare where they can be and
// quoted otherwise. Parse(e.String()) yields e again. The zero Expr's
// string is empty.
func (e Expr) String() string {
	if e.source == "" {
		return ""
	}
	var b strings.Builder
	b.WriteString(e.source)
	b.WriteByte(':')
	b.WriteString(e.event)
	for _, c := range e.conds {
		b.WriteByte(' ')
		b.WriteString(c.key)
		b.WriteByte('=')
		switch {
		case c.present:
			b.WriteByte('*')
		case isBareWord(c.value):
			b.WriteString(c.value)
		default:
			b.WriteByte('"')
			for i := 0; i < len(c.value); i++ {
				if ch := c.value[i]; ch == '"' || ch == '\\' {
					b.WriteByte('\\')
				}
				b.WriteByte(c.value[i])
			}
			b.WriteByte('"')
		}
	}
	return b.String()
}

// Source returns the expression's SOURCE: github or a hook name.
func (e Expr) Source() string { return e.source }

// Event returns the expression's EVENT.
func (e Expr) Event() string { return e.event }

// Match reports whether ev satisfies the expression: same source, same
// event name (for github, an EVENT without action matches every action of
// that event) and every condition.
func (e Expr) Match(ev Event) bool {
	v := eventView{ev: &ev}
	return e.match(&v)
}

func (e Expr) match(v *eventView) bool {
	if e.source == "" || e.source != v.ev.Source || !e.matchName(v.ev.Name) {
		return false
	}
	for _, c := range e.conds {
		s, p := v.value(c.key)
		if c.present {
			if p == valueAbsent {
				return false
			}
		} else if p != valueScalar || s != c.value {
			return false
		}
	}
	return true
}

// anyAction reports whether the expression is a github EVENT without
// action, which matches every action of the event.
func (e Expr) anyAction() bool {
	return e.source == sourceGitHub && !strings.Contains(e.event, ".")
}

func (e Expr) matchName(name string) bool {
	if name == e.event {
		return true
	}
	return e.anyAction() && len(name) > len(e.event) && name[len(e.event)] == '.' && strings.HasPrefix(name, e.event)
}

// eventView looks up keys in an event, decoding its body once, on first
// need.
type eventView struct {
	ev      *Event
	body    any
	decoded bool
}

// value returns the event's field named key, or else what the dotted path
// key leads to in the body. A body that is not JSON has no paths.
func (v *eventView) value(key string) (string, valuePresence) {
	if s, ok := v.ev.Fields[key]; ok {
		return s, valueScalar
	}
	if !v.decoded {
		v.decoded = true
		v.body, _ = decodeEventBody(v.ev.Body)
	}
	if v.body == nil {
		return "", valueAbsent
	}
	return jsonPathValue(v.body, key)
}

package eventlog

import (
	"strings"

	"github.com/leadstream/leadstream/internal/events"
)

// Subjects of the event stream, one token per thing the server filters on:
//
//	ev.<org>.<instance>.<source>.<objectType>.<eventType>.<c|n>
//
// The last token says whether the event goes to a callback URL ("c") or not
// ("n"), so the delivery consumer sees only the events it delivers.
// Redeliveries asked for by users are rd.<org>.<instance>; attempts are
// at.<instance> in their own stream.
const (
	prefixEvent      = "ev"
	prefixRedeliver  = "rd"
	prefixAttempt    = "at"
	tokenCallback    = "c"
	tokenNoCallback  = "n"
	maxFilterSubject = 64 // server filter combinations before coarser filters are used
)

// token encodes s into the NATS subject alphabet: letters, digits and '-'
// stay, every other byte becomes "_XX" (hex), so type names with spaces or
// dots, and empty strings, make one valid token each, and no two strings
// share a token.
func token(s string) string {
	if s == "" {
		return "_"
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if !plain(s[i]) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if plain(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// untoken reverses token; ok is false for what token never makes.
func untoken(t string) (string, bool) {
	if t == "_" {
		return "", true
	}
	if !strings.Contains(t, "_") {
		return t, true
	}
	b := make([]byte, 0, len(t))
	for i := 0; i < len(t); i++ {
		c := t[i]
		if c != '_' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(t) {
			return "", false
		}
		hi, lo := unhex(t[i+1]), unhex(t[i+2])
		if hi < 0 || lo < 0 {
			return "", false
		}
		b = append(b, byte(hi<<4|lo))
		i += 2
	}
	return string(b), true
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// subjectIDs reads the organization and instance out of an event subject.
func subjectIDs(subj string) (orgID, instanceID string, ok bool) {
	rest, ok := strings.CutPrefix(subj, prefixEvent+".")
	if !ok {
		return "", "", false
	}
	o, rest, ok1 := strings.Cut(rest, ".")
	i, _, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 {
		return "", "", false
	}
	if orgID, ok = untoken(o); !ok {
		return "", "", false
	}
	instanceID, ok = untoken(i)
	return orgID, instanceID, ok
}

func plain(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-'
}

func eventSubject(e *events.Event) string {
	cb := tokenNoCallback
	if e.Notify {
		cb = tokenCallback
	}
	return strings.Join([]string{prefixEvent, token(e.OrgID), token(e.InstanceID), token(string(e.Source)),
		token(e.ObjectType), token(e.EventType), cb}, ".")
}

// filterSubjects returns the subjects that select f's events: the cartesian
// product of its lists, or, when that would be too many, a coarser set (the
// caller matches each event against f as well). coarse reports the latter.
func filterSubjects(f events.Filter) (subs []string, coarse bool) {
	dim := func(vals []string) []string {
		if len(vals) == 0 {
			return []string{"*"}
		}
		seen := map[string]bool{}
		var out []string
		for _, v := range vals {
			if t := token(v); !seen[t] {
				seen[t] = true
				out = append(out, t)
			}
		}
		return out
	}
	inst := "*"
	if f.InstanceID != "" {
		inst = token(f.InstanceID)
	}
	srcs := make([]string, len(f.Sources))
	for i, s := range f.Sources {
		srcs[i] = string(s)
	}
	ds, do, de := dim(srcs), dim(f.ObjectTypes), dim(f.EventTypes)
	if len(ds)*len(do)*len(de) > maxFilterSubject {
		coarse, de = true, []string{"*"}
		if len(ds)*len(do) > maxFilterSubject {
			do = []string{"*"}
		}
	}
	for _, s := range ds {
		for _, o := range do {
			for _, e := range de {
				subs = append(subs, strings.Join([]string{prefixEvent, token(f.OrgID), inst, s, o, e, "*"}, "."))
			}
		}
	}
	return subs, coarse
}

func instanceEvents(instanceID string) string {
	return prefixEvent + ".*." + token(instanceID) + ".>"
}

func redeliverSubject(orgID, instanceID string) string {
	return prefixRedeliver + "." + token(orgID) + "." + token(instanceID)
}

func attemptSubject(instanceID string) string { return prefixAttempt + "." + token(instanceID) }

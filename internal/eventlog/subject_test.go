package eventlog

import "testing"

func TestUntoken(t *testing.T) {
	for _, s := range []string{"", "plain-Id9", "with space", "a.b.c", "_", "__x", "ünïcode", "*>", "%41"} {
		got, ok := untoken(token(s))
		if !ok || got != s {
			t.Errorf("untoken(token(%q)) = %q, %v", s, got, ok)
		}
	}
	for _, bad := range []string{"_4", "_zz", "a_", "_4g"} {
		if _, ok := untoken(bad); ok {
			t.Errorf("untoken(%q) accepted", bad)
		}
	}
}

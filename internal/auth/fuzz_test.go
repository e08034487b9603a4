package auth_test

import (
	"strings"
	"testing"

	"github.com/leadstream/leadstream/internal/auth"
)

// FuzzParse: any Authorization value either parses into two non-empty
// secrets without surrounding spaces, which parse back the same when
// written in the canonical form, or is ErrUnauthenticated. Seeds are in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add("User u1, Organization o1")
	f.Add("organization o1,user u1")
	f.Fuzz(func(t *testing.T, header string) {
		user, org, err := auth.Parse(header)
		if err != nil {
			if err != auth.ErrUnauthenticated || user != "" || org != "" {
				t.Fatalf("Parse(%q) = %q, %q, %v", header, user, org, err)
			}
			return
		}
		for _, v := range []string{user, org} {
			if v == "" || strings.TrimSpace(v) != v || strings.Contains(v, ",") {
				t.Fatalf("Parse(%q) gave secret %q", header, v)
			}
		}
		u2, o2, err := auth.Parse("User " + user + ", Organization " + org)
		if err != nil || u2 != user || o2 != org {
			t.Fatalf("canonical form of %q parsed as %q, %q, %v", header, u2, o2, err)
		}
	})
}

package auth_test

import (
	"strings"
	"testing"

	"github.com/leadstream/leadstream/internal/auth"
)

// FuzzParse: any Authorization value either parses into secrets that are
// non-empty without surrounding spaces (User and Organization together,
// or an Element token), which parse back the same when written in the
// canonical form, or is ErrUnauthenticated. Seeds are in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add("User u1, Organization o1")
	f.Add("organization o1,user u1, Element e1")
	f.Fuzz(func(t *testing.T, header string) {
		c, err := auth.Parse(header)
		if err != nil {
			if err != auth.ErrUnauthenticated || c != (auth.Credentials{}) {
				t.Fatalf("Parse(%q) = %+v, %v", header, c, err)
			}
			return
		}
		if (c.User == "") != (c.Org == "") || c.User == "" && c.Element == "" {
			t.Fatalf("Parse(%q) = %+v: half a pair or nothing", header, c)
		}
		var parts []string
		for _, p := range [][2]string{{"User", c.User}, {"Organization", c.Org}, {"Element", c.Element}} {
			if p[1] == "" {
				continue
			}
			if strings.TrimSpace(p[1]) != p[1] || strings.Contains(p[1], ",") {
				t.Fatalf("Parse(%q) gave %s secret %q", header, p[0], p[1])
			}
			parts = append(parts, p[0]+" "+p[1])
		}
		again, err := auth.Parse(strings.Join(parts, ", "))
		if err != nil || again != c {
			t.Fatalf("canonical form of %q parsed as %+v, %v", header, again, err)
		}
	})
}

package marketo_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

var leadTypes = []int{12, 13, 37}

func TestPagingAllActivities(t *testing.T) {
	s := newFake(t)
	s.SetEmptyPageEvery(2)
	mixed := []int{12, 13, 1, 37, 13, 6}
	var want []marketotest.Activity
	for i := range 1000 {
		a := s.AddLeadActivity(mixed[i%len(mixed)], 1000+i)
		if a.ActivityTypeID != 1 && a.ActivityTypeID != 6 {
			want = append(want, a)
		}
	}
	c := newClient(s, testOptions())
	tok, err := c.PagingToken(t.Context(), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}

	got, emptyMore, last := pageAll(t, c, tok)
	if emptyMore == 0 {
		t.Fatal("no empty page with moreResult true on the way")
	}
	checkSame(t, got, want)

	// Caught up: the last token finds only what is added later.
	later := s.AddActivities(
		marketotest.Activity{LeadID: 1, ActivityTypeID: 12},
		marketotest.Activity{LeadID: 1, ActivityTypeID: 2},
		marketotest.Activity{LeadID: 1, ActivityTypeID: 37},
	)
	got, _, _ = pageAll(t, c, last)
	checkSame(t, got, []marketotest.Activity{later[0], later[2]})
}

func pageAll(t *testing.T, c *marketo.Client, tok string) (acts []marketo.Activity, emptyMore int, last string) {
	t.Helper()
	for range 100 {
		page, err := c.Activities(t.Context(), tok, leadTypes)
		if err != nil {
			t.Fatal(err)
		}
		if page.NextPageToken == "" {
			t.Fatal("empty NextPageToken")
		}
		if len(page.Activities) == 0 && page.MoreResult {
			emptyMore++
		}
		acts = append(acts, page.Activities...)
		tok = page.NextPageToken
		if !page.MoreResult {
			return acts, emptyMore, tok
		}
	}
	t.Fatal("paging did not end")
	return nil, 0, ""
}

// checkSame compares what the client read with what the fake holds.
func checkSame(t *testing.T, got []marketo.Activity, want []marketotest.Activity) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d activities, want %d", len(got), len(want))
	}
	seen := map[string]bool{}
	for i, g := range got {
		w := want[i]
		if g.ID != w.ID || g.MarketoGUID != w.MarketoGUID || g.LeadID != w.LeadID || g.ActivityTypeID != w.ActivityTypeID || !g.ActivityDate.Equal(w.ActivityDate) {
			t.Fatalf("activity %d = %+v, want %+v", i, g, w)
		}
		if seen[g.MarketoGUID] {
			t.Fatalf("activity %s twice", g.MarketoGUID)
		}
		seen[g.MarketoGUID] = true
		var raw marketotest.Activity
		if err := json.Unmarshal(g.Raw, &raw); err != nil || raw.ID != w.ID || len(raw.Attributes) != len(w.Attributes) {
			t.Fatalf("Raw %s does not hold activity %d", g.Raw, w.ID)
		}
	}
}

func TestRawIsWhatMarketoSent(t *testing.T) {
	s := newFake(t)
	for _, ty := range []int{12, 13, 37, 12} {
		s.AddLeadActivity(ty, 7)
	}
	s.AddActivities(marketotest.Activity{LeadID: 8, ActivityTypeID: 13, PrimaryAttributeValue: `quote " and <html> & ünïcödé`})
	c := newClient(s, testOptions())
	tok, err := c.PagingToken(t.Context(), time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	page, err := c.Activities(t.Context(), tok, leadTypes)
	if err != nil {
		t.Fatal(err)
	}

	// Ask the fake for the same page directly and cut out each activity's bytes.
	body := rawGet(t, s, "/rest/v1/activities.json", url.Values{"nextPageToken": {tok}, "activityTypeIds": {"12,13,37"}})
	var env struct {
		Result []json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatal(err)
	}
	if len(env.Result) != 5 || len(page.Activities) != 5 {
		t.Fatalf("fake sent %d activities, client read %d; want 5", len(env.Result), len(page.Activities))
	}
	for i, raw := range env.Result {
		if got := string(page.Activities[i].Raw); got != string(raw) {
			t.Fatalf("Raw %d = %s\nwant %s", i, got, raw)
		}
		if !strings.Contains(string(body), string(raw)) {
			t.Fatal("raw activity is not a slice of the body")
		}
	}
}

// rawGet calls the fake with a token of its own, bypassing the client.
func rawGet(t *testing.T, s *marketotest.Server, path string, q url.Values) []byte {
	t.Helper()
	resp, err := http.Get(s.IdentityURL() + "/oauth/token?grant_type=client_credentials&client_id=id&client_secret=secret")
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodGet, s.RESTURL()+path+"?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func TestPagingTokenSince(t *testing.T) {
	s := newFake(t)
	now := time.Now().UTC().Truncate(time.Second)
	old := s.AddActivities(
		marketotest.Activity{LeadID: 1, ActivityTypeID: 12, ActivityDate: now.Add(-3 * time.Hour)},
		marketotest.Activity{LeadID: 2, ActivityTypeID: 12, ActivityDate: now.Add(-2 * time.Hour)},
		marketotest.Activity{LeadID: 3, ActivityTypeID: 12, ActivityDate: now.Add(-1 * time.Hour)},
	)
	c := newClient(s, testOptions())
	tests := []struct {
		since time.Time
		want  []marketotest.Activity
	}{
		{now.Add(-4 * time.Hour), old},
		{now.Add(-2 * time.Hour).In(time.FixedZone("EST", -5*3600)), old[1:]},
		{now.Add(-90 * time.Minute), old[2:]},
		{now, nil},
	}
	for _, tt := range tests {
		tok, err := c.PagingToken(t.Context(), tt.since)
		if err != nil {
			t.Fatal(err)
		}
		got, _, _ := pageAll(t, c, tok)
		checkSame(t, got, tt.want)
	}
}

func TestActivitiesArguments(t *testing.T) {
	s := newFake(t)
	c := newClient(s, testOptions())
	tok, err := c.PagingToken(t.Context(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		tok   string
		types []int
		want  error
		calls int
	}{
		{"ten types", tok, []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, nil, 1},
		{"eleven types", tok, []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, marketo.ErrBadRequest, 0},
		{"no types", tok, nil, marketo.ErrBadRequest, 0},
		{"no token", "", leadTypes, marketo.ErrBadRequest, 0},
		{"token Marketo rejects", "bogus", leadTypes, marketo.ErrBadRequest, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.ResetStats()
			_, err := c.Activities(t.Context(), tt.tok, tt.types)
			if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("error = %v, want %v", err, tt.want)
			}
			if got := s.Stats().RESTCalls; got != tt.calls {
				t.Fatalf("REST calls = %d, want %d", got, tt.calls)
			}
		})
	}
}

func TestActivityTypes(t *testing.T) {
	s := newFake(t)
	types, err := newClient(s, testOptions()).ActivityTypes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	byID := map[int]marketo.ActivityType{}
	for _, ty := range types {
		byID[ty.ID] = ty
	}
	for id, name := range map[int]string{1: "Visit Webpage", 2: "Fill Out Form", 6: "Send Email", 12: "New Lead", 13: "Change Data Value", 37: "Delete Lead"} {
		if ty := byID[id]; ty.Name != name || ty.Description == "" {
			t.Errorf("type %d = %+v, want name %q and a description", id, ty, name)
		}
	}
}

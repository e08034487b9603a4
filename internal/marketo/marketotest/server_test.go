package marketotest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

type tokenAnswer struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Scope       string `json:"scope"`
	Error       string `json:"error"`
}

type envelope struct {
	RequestID     string            `json:"requestId"`
	Success       bool              `json:"success"`
	Errors        []apiError        `json:"errors"`
	Result        []json.RawMessage `json:"result"`
	NextPageToken string            `json:"nextPageToken"`
	MoreResult    *bool             `json:"moreResult"`
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func newServer(t *testing.T) *marketotest.Server {
	t.Helper()
	s := marketotest.New()
	t.Cleanup(s.Close)
	s.AddClient("id", "secret")
	return s
}

// requestToken asks the identity endpoint the way Marketo documents.
func requestToken(t *testing.T, s *marketotest.Server, method, id, secret string, inBody bool) (int, tokenAnswer) {
	t.Helper()
	v := url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}}
	target := s.IdentityURL() + "/oauth/token"
	var body io.Reader
	if inBody {
		body = strings.NewReader(v.Encode())
	} else {
		target += "?" + v.Encode()
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	if inBody {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ans tokenAnswer
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		t.Fatalf("token answer is not JSON: %v", err)
	}
	return resp.StatusCode, ans
}

func token(t *testing.T, s *marketotest.Server) string {
	t.Helper()
	status, ans := requestToken(t, s, http.MethodGet, "id", "secret", false)
	if status != http.StatusOK {
		t.Fatalf("token: status %d", status)
	}
	return ans.AccessToken
}

// get calls a REST path and returns the decoded envelope and the raw body.
func get(t *testing.T, s *marketotest.Server, tok, path string, q url.Values) (envelope, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.RESTURL()+path+"?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var env envelope
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &env); err != nil {
			t.Fatalf("GET %s: not JSON: %v: %s", path, err, body)
		}
	}
	return env, body
}

func errCode(env envelope) string {
	if env.Success || len(env.Errors) == 0 {
		return ""
	}
	return env.Errors[0].Code
}

func TestIdentity(t *testing.T) {
	s := newServer(t)
	tests := []struct {
		name       string
		method     string
		id, secret string
		inBody     bool
		wantStatus int
	}{
		{"GET with query", http.MethodGet, "id", "secret", false, http.StatusOK},
		{"POST with query", http.MethodPost, "id", "secret", false, http.StatusOK},
		{"POST with form body", http.MethodPost, "id", "secret", true, http.StatusOK},
		{"wrong secret", http.MethodGet, "id", "nope", false, http.StatusUnauthorized},
		{"unknown client", http.MethodPost, "other", "secret", true, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, ans := requestToken(t, s, tt.method, tt.id, tt.secret, tt.inBody)
			if status != tt.wantStatus {
				t.Fatalf("status = %d, want %d", status, tt.wantStatus)
			}
			if status != http.StatusOK {
				if ans.Error == "" || ans.AccessToken != "" {
					t.Fatalf("error answer = %+v, want an error and no token", ans)
				}
				return
			}
			if !strings.HasSuffix(ans.AccessToken, ":ab") || ans.TokenType != "bearer" || ans.Scope == "" {
				t.Fatalf("answer = %+v", ans)
			}
			if ans.ExpiresIn < 3590 || ans.ExpiresIn > 3599 {
				t.Fatalf("expires_in = %d, want about 3599", ans.ExpiresIn)
			}
		})
	}
	t.Run("missing grant type", func(t *testing.T) {
		resp, err := http.Get(s.IdentityURL() + "/oauth/token?client_id=id&client_secret=secret")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status = %d, want 400", resp.StatusCode)
		}
	})
}

func TestTokenReusedUntilExpiry(t *testing.T) {
	s := newServer(t)
	_, first := requestToken(t, s, http.MethodGet, "id", "secret", false)
	_, second := requestToken(t, s, http.MethodPost, "id", "secret", true)
	if first.AccessToken != second.AccessToken {
		t.Fatalf("second token %q differs from first %q before expiry", second.AccessToken, first.AccessToken)
	}
	if second.ExpiresIn > first.ExpiresIn {
		t.Fatalf("expires_in grew from %d to %d", first.ExpiresIn, second.ExpiresIn)
	}

	s.SetTokenTTL(20 * time.Millisecond)
	s.AddClient("short", "lived")
	_, a := requestToken(t, s, http.MethodGet, "short", "lived", false)
	time.Sleep(30 * time.Millisecond)
	_, b := requestToken(t, s, http.MethodGet, "short", "lived", false)
	if a.AccessToken == b.AccessToken {
		t.Fatal("expired token was handed out again")
	}
	if got := s.Stats().TokenRequests; got != 4 {
		t.Fatalf("TokenRequests = %d, want 4", got)
	}
}

func TestRESTAuthentication(t *testing.T) {
	const path = "/rest/v1/activities/types.json"
	tests := []struct {
		name     string
		setup    func(t *testing.T, s *marketotest.Server) string // returns the token to send
		wantCode string                                           // "" for success
	}{
		{"valid token", func(t *testing.T, s *marketotest.Server) string { return token(t, s) }, ""},
		{"no token", func(*testing.T, *marketotest.Server) string { return "" }, "601"},
		{"unknown token", func(*testing.T, *marketotest.Server) string { return "made-up:ab" }, "601"},
		{"expired token", func(t *testing.T, s *marketotest.Server) string {
			s.SetTokenTTL(10 * time.Millisecond)
			tok := token(t, s)
			time.Sleep(20 * time.Millisecond)
			return tok
		}, "602"},
		{"revoked client", func(t *testing.T, s *marketotest.Server) string {
			tok := token(t, s)
			s.RevokeClient("id")
			return tok
		}, "601"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t)
			env, _ := get(t, s, tt.setup(t, s), path, nil)
			if got := errCode(env); got != tt.wantCode {
				t.Fatalf("code = %q, want %q (answer %+v)", got, tt.wantCode, env)
			}
			if tt.wantCode == "" && !env.Success {
				t.Fatalf("success = false: %+v", env)
			}
			st := s.Stats()
			want := "ok"
			if tt.wantCode != "" {
				want = tt.wantCode
			}
			if st.RESTCalls != 1 || st.ByResult[want] != 1 {
				t.Fatalf("stats = %+v, want one call answered %q", st, want)
			}
		})
	}
	t.Run("revoked client cannot get a token", func(t *testing.T) {
		s := newServer(t)
		s.RevokeClient("id")
		if status, _ := requestToken(t, s, http.MethodGet, "id", "secret", false); status != http.StatusUnauthorized {
			t.Fatalf("status = %d, want 401", status)
		}
	})
}

func TestActivityTypes(t *testing.T) {
	s := newServer(t)
	env, _ := get(t, s, token(t, s), "/rest/v1/activities/types.json", nil)
	names := map[int]string{}
	for _, raw := range env.Result {
		var ty struct {
			ID               int    `json:"id"`
			Name             string `json:"name"`
			Description      string `json:"description"`
			PrimaryAttribute struct {
				Name     string `json:"name"`
				DataType string `json:"dataType"`
			} `json:"primaryAttribute"`
		}
		if err := json.Unmarshal(raw, &ty); err != nil {
			t.Fatal(err)
		}
		if ty.Description == "" || ty.PrimaryAttribute.Name == "" || ty.PrimaryAttribute.DataType == "" {
			t.Errorf("type %s is incomplete", raw)
		}
		names[ty.ID] = ty.Name
	}
	for id, name := range map[int]string{1: "Visit Webpage", 2: "Fill Out Form", 6: "Send Email", 12: "New Lead", 13: "Change Data Value", 37: "Delete Lead"} {
		if names[id] != name {
			t.Errorf("type %d = %q, want %q", id, names[id], name)
		}
	}
}

// pageAll pages from tok until moreResult is false, returning the ids seen,
// how many empty pages said moreResult true, and the last token.
func pageAll(t *testing.T, s *marketotest.Server, bearer, tok, types string) (ids []int64, emptyMore int, last string) {
	t.Helper()
	for range 1000 {
		env, _ := get(t, s, bearer, "/rest/v1/activities.json", url.Values{"nextPageToken": {tok}, "activityTypeIds": {types}})
		if !env.Success || env.NextPageToken == "" || env.MoreResult == nil {
			t.Fatalf("page answer = %+v", env)
		}
		if len(env.Result) > marketotest.PageSize {
			t.Fatalf("page of %d activities", len(env.Result))
		}
		if len(env.Result) == 0 && *env.MoreResult {
			emptyMore++
		}
		for _, raw := range env.Result {
			var a marketotest.Activity
			if err := json.Unmarshal(raw, &a); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, a.ID)
		}
		tok = env.NextPageToken
		if !*env.MoreResult {
			return ids, emptyMore, tok
		}
	}
	t.Fatal("paging did not end")
	return nil, 0, ""
}

func TestActivityPaging(t *testing.T) {
	s := newServer(t)
	bearer := token(t, s)
	types := []int{12, 13, 37, 1}
	var want []int64
	for i := range 1000 {
		a := s.AddLeadActivity(types[i%len(types)], 100+i)
		if a.ActivityTypeID != 1 {
			want = append(want, a.ID)
		}
	}
	env, _ := get(t, s, bearer, "/rest/v1/activities/pagingtoken.json", url.Values{"sinceDatetime": {time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)}})
	if !env.Success || env.NextPageToken == "" {
		t.Fatalf("paging token answer = %+v", env)
	}

	got, emptyMore, last := pageAll(t, s, bearer, env.NextPageToken, "12,13,37")
	if !equalIDs(got, want) {
		t.Fatalf("got %d activities, want %d in order", len(got), len(want))
	}
	if emptyMore == 0 {
		t.Fatal("no empty page with moreResult true")
	}

	// The same token gives the same page.
	a, _ := get(t, s, bearer, "/rest/v1/activities.json", url.Values{"nextPageToken": {env.NextPageToken}, "activityTypeIds": {"12,13,37"}})
	b, _ := get(t, s, bearer, "/rest/v1/activities.json", url.Values{"nextPageToken": {env.NextPageToken}, "activityTypeIds": {"12,13,37"}})
	if a.NextPageToken != b.NextPageToken || len(a.Result) != len(b.Result) {
		t.Fatal("token is not stable")
	}

	// Caught up: the last token finds what is added later, and only that.
	added := s.AddActivities(marketotest.Activity{LeadID: 7, ActivityTypeID: 12}, marketotest.Activity{LeadID: 7, ActivityTypeID: 1}, marketotest.Activity{LeadID: 7, ActivityTypeID: 13})
	got, _, _ = pageAll(t, s, bearer, last, "12,13,37")
	if !equalIDs(got, []int64{added[0].ID, added[2].ID}) {
		t.Fatalf("after catching up got %v, want ids %d and %d", got, added[0].ID, added[2].ID)
	}
}

func TestEmptyPageEvery(t *testing.T) {
	tests := []struct {
		every     int
		wantEmpty int
	}{
		{0, 0},
		{2, 3}, // 1,000 activities: full, empty, full, empty, full, empty, last
	}
	for _, tt := range tests {
		s := newServer(t)
		s.SetEmptyPageEvery(tt.every)
		for i := range 1000 {
			s.AddLeadActivity(12, i)
		}
		bearer := token(t, s)
		env, _ := get(t, s, bearer, "/rest/v1/activities/pagingtoken.json", url.Values{"sinceDatetime": {"2000-01-01T00:00:00Z"}})
		ids, empty, _ := pageAll(t, s, bearer, env.NextPageToken, "12")
		if len(ids) != 1000 || empty != tt.wantEmpty {
			t.Errorf("every %d: %d activities, %d empty pages; want 1000, %d", tt.every, len(ids), empty, tt.wantEmpty)
		}
	}
}

func TestPagingTokenSince(t *testing.T) {
	s := newServer(t)
	now := time.Now().UTC().Truncate(time.Second)
	var acts []marketotest.Activity
	for i := range 6 {
		acts = append(acts, marketotest.Activity{LeadID: int64(i), ActivityTypeID: 12, ActivityDate: now.Add(time.Duration(i-6) * time.Hour)})
	}
	stored := s.AddActivities(acts...)
	bearer := token(t, s)
	tests := []struct {
		since string
		want  []int64
	}{
		{now.Add(-7 * time.Hour).Format(time.RFC3339), ids(stored)},
		{now.Add(-3 * time.Hour).Format(time.RFC3339), ids(stored[3:])},
		{now.Add(-3 * time.Hour).In(time.FixedZone("", -5*3600)).Format(time.RFC3339), ids(stored[3:])},
		{now.Add(-150 * time.Minute).Format("2006-01-02T15:04:05-0700"), ids(stored[4:])},
		{now.Format(time.RFC3339), nil},
	}
	for _, tt := range tests {
		env, _ := get(t, s, bearer, "/rest/v1/activities/pagingtoken.json", url.Values{"sinceDatetime": {tt.since}})
		if !env.Success {
			t.Fatalf("since %s: %+v", tt.since, env)
		}
		got, _, _ := pageAll(t, s, bearer, env.NextPageToken, "12")
		if !equalIDs(got, tt.want) {
			t.Errorf("since %s: got %v, want %v", tt.since, got, tt.want)
		}
	}
}

func TestBadRequests(t *testing.T) {
	s := newServer(t)
	bearer := token(t, s)
	env, _ := get(t, s, bearer, "/rest/v1/activities/pagingtoken.json", url.Values{"sinceDatetime": {"2020-01-01T00:00:00Z"}})
	good := env.NextPageToken
	tests := []struct {
		name string
		path string
		q    url.Values
	}{
		{"no sinceDatetime", "/rest/v1/activities/pagingtoken.json", nil},
		{"bad sinceDatetime", "/rest/v1/activities/pagingtoken.json", url.Values{"sinceDatetime": {"yesterday"}}},
		{"no page token", "/rest/v1/activities.json", url.Values{"activityTypeIds": {"12"}}},
		{"bad page token", "/rest/v1/activities.json", url.Values{"nextPageToken": {"not-a-token"}, "activityTypeIds": {"12"}}},
		{"no type ids", "/rest/v1/activities.json", url.Values{"nextPageToken": {good}}},
		{"bad type id", "/rest/v1/activities.json", url.Values{"nextPageToken": {good}, "activityTypeIds": {"12,x"}}},
		{"eleven type ids", "/rest/v1/activities.json", url.Values{"nextPageToken": {good}, "activityTypeIds": {"1,2,3,4,5,6,7,8,9,10,11"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, _ := get(t, s, bearer, tt.path, tt.q)
			if got := errCode(env); got != "1003" {
				t.Fatalf("code = %q, want 1003 (%+v)", got, env)
			}
		})
	}
	t.Run("ten type ids", func(t *testing.T) {
		env, _ := get(t, s, bearer, "/rest/v1/activities.json", url.Values{"nextPageToken": {good}, "activityTypeIds": {"1,2,3,4,5,6,7,8,9,10"}})
		if !env.Success {
			t.Fatalf("answer = %+v", env)
		}
	})
}

func TestActivityJSON(t *testing.T) {
	s := newServer(t)
	a := s.AddLeadActivity(13, 42)
	b := s.AddActivities(marketotest.Activity{LeadID: 43, ActivityTypeID: 12, MarketoGUID: "given-guid"})[0]
	if a.ID >= b.ID || a.MarketoGUID == "" || a.MarketoGUID == b.MarketoGUID || b.MarketoGUID != "given-guid" {
		t.Fatalf("ids or guids wrong: %+v %+v", a, b)
	}
	bearer := token(t, s)
	env, _ := get(t, s, bearer, "/rest/v1/activities/pagingtoken.json", url.Values{"sinceDatetime": {"2020-01-01T00:00:00Z"}})
	page, _ := get(t, s, bearer, "/rest/v1/activities.json", url.Values{"nextPageToken": {env.NextPageToken}, "activityTypeIds": {"12,13"}})
	if len(page.Result) != 2 {
		t.Fatalf("got %d activities", len(page.Result))
	}
	var first map[string]any
	if err := json.Unmarshal(page.Result[0], &first); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"id", "marketoGUID", "leadId", "activityDate", "activityTypeId", "primaryAttributeValueId", "primaryAttributeValue", "attributes"} {
		if _, ok := first[key]; !ok {
			t.Errorf("activity has no %q: %s", key, page.Result[0])
		}
	}
	if d, _ := first["activityDate"].(string); !strings.HasSuffix(d, "Z") || strings.Contains(d, ".") {
		t.Errorf("activityDate = %q, want RFC 3339 UTC seconds", d)
	}
	if strings.Contains(string(page.Result[1]), "attributes") {
		t.Errorf("empty attributes not left out: %s", page.Result[1])
	}
}

func TestFaults(t *testing.T) {
	const types = "/rest/v1/activities/types.json"
	tests := []struct {
		name   string
		faults []marketotest.Fault
		want   []string // the result of each call, in order
	}{
		{"code then normal", []marketotest.Fault{{Code: "606", Times: 2}}, []string{"606", "606", "ok"}},
		{"queued in order", []marketotest.Fault{{Code: "615", Times: 1}, {HTTPStatus: 503, Times: 1}, {Malformed: true, Times: 1}}, []string{"615", "http_503", "malformed", "ok"}},
		{"until cleared", []marketotest.Fault{{Code: "607"}}, []string{"607", "607", "607", "607"}},
		{"slow then normal", []marketotest.Fault{{Delay: 50 * time.Millisecond, Times: 1}}, []string{"ok", "ok"}},
		{"other path untouched", []marketotest.Fault{{Code: "1003", Times: 1, Path: "/rest/v1/activities.json"}}, []string{"ok", "ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t)
			bearer := token(t, s)
			for _, f := range tt.faults {
				s.SetFault(f)
			}
			for i, want := range tt.want {
				began := time.Now()
				req, _ := http.NewRequest(http.MethodGet, s.RESTURL()+types, nil)
				req.Header.Set("Authorization", "Bearer "+bearer)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var env envelope
				jsonErr := json.Unmarshal(body, &env)
				got := "ok"
				switch {
				case resp.StatusCode != http.StatusOK:
					got = "http_" + resp.Status[:3]
				case jsonErr != nil:
					got = "malformed"
				case !env.Success:
					got = errCode(env)
					if env.Errors[0].Message == "" {
						t.Errorf("call %d: error without message", i)
					}
				}
				if got != want {
					t.Fatalf("call %d = %s, want %s", i, got, want)
				}
				if tt.name == "slow then normal" && i == 0 && time.Since(began) < 50*time.Millisecond {
					t.Fatal("slow fault answered fast")
				}
			}
			if st := s.Stats(); st.RESTCalls != len(tt.want) || st.RESTCallsByPath[types] != len(tt.want) {
				t.Fatalf("stats = %+v", st)
			}
			s.ClearFaults()
			if env, _ := get(t, s, bearer, types, nil); !env.Success {
				t.Fatalf("after ClearFaults: %+v", env)
			}
		})
	}
}

func TestStatsConcurrency(t *testing.T) {
	s := newServer(t)
	bearer := token(t, s)
	s.SetLatency(30 * time.Millisecond)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			get(t, s, bearer, "/rest/v1/activities/types.json", nil)
		})
	}
	wg.Wait()
	st := s.Stats()
	if st.RESTCalls != 8 || st.InFlight != 0 || st.MaxInFlight < 2 || st.MaxInFlight > 8 {
		t.Fatalf("stats = %+v, want 8 calls that overlapped", st)
	}
	if got := st.MaxInWindow(time.Minute); got != 8 {
		t.Fatalf("MaxInWindow(1m) = %d, want 8", got)
	}
	s.ResetStats()
	if st := s.Stats(); st.RESTCalls != 0 || st.MaxInWindow(time.Minute) != 0 || st.TokenRequests != 0 {
		t.Fatalf("after reset: %+v", st)
	}
}

func TestGenerator(t *testing.T) {
	s := newServer(t)
	ctx, cancel := context.WithCancel(t.Context())
	s.StartGenerator(ctx, 500)
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Activities()) < 50 {
		if time.Now().After(deadline) {
			t.Fatal("generator made too few activities")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	time.Sleep(50 * time.Millisecond)
	acts := s.Activities()
	time.Sleep(50 * time.Millisecond)
	if n := len(s.Activities()); n != len(acts) {
		t.Fatalf("generator still running after cancel: %d -> %d", len(acts), n)
	}
	created := map[int64]bool{}
	for _, a := range acts {
		switch a.ActivityTypeID {
		case 12:
			created[a.LeadID] = true
		case 13, 37:
			if !created[a.LeadID] {
				t.Fatalf("activity %+v for a lead never created", a)
			}
			if a.ActivityTypeID == 37 {
				delete(created, a.LeadID)
			}
		default:
			t.Fatalf("unexpected type %d", a.ActivityTypeID)
		}
	}

	// Close stops a generator whose context never ends.
	s2 := marketotest.New()
	s2.StartGenerator(context.Background(), 100)
	s2.Close()
	n := len(s2.Activities())
	time.Sleep(30 * time.Millisecond)
	if len(s2.Activities()) != n {
		t.Fatal("generator still running after Close")
	}
	s2.StartGenerator(context.Background(), 100) // no-op once closed
}

func ids(acts []marketotest.Activity) []int64 {
	out := make([]int64, len(acts))
	for i, a := range acts {
		out[i] = a.ID
	}
	return out
}

func equalIDs(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

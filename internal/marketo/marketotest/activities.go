package marketotest

import (
	"context"
	"encoding/base32"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Activity is one Marketo activity, with the JSON field names Marketo uses.
type Activity struct {
	ID                      int64       `json:"id"`
	MarketoGUID             string      `json:"marketoGUID"`
	LeadID                  int64       `json:"leadId"`
	ActivityDate            time.Time   `json:"activityDate"`
	ActivityTypeID          int         `json:"activityTypeId"`
	PrimaryAttributeValueID int64       `json:"primaryAttributeValueId,omitempty"`
	PrimaryAttributeValue   string      `json:"primaryAttributeValue,omitempty"`
	Attributes              []Attribute `json:"attributes,omitempty"`
}

// Attribute is one name/value pair of an activity.
type Attribute struct {
	Name  string `json:"name"`
	Value any    `json:"value"`
}

// Activity type ids the fake knows (see types.json).
const (
	TypeVisitWebpage    = 1
	TypeFillOutForm     = 2
	TypeSendEmail       = 6
	TypeEmailDelivered  = 7
	TypeOpenEmail       = 10
	TypeClickEmail      = 11
	TypeNewLead         = 12
	TypeChangeDataValue = 13
	TypeDeleteLead      = 37
)

// PageSize is the most activities Marketo returns in one page.
const PageSize = 300

// MaxActivityTypeIDs is the most activityTypeIds one activities call accepts.
const MaxActivityTypeIDs = 10

// AddActivities appends activities in order and returns them as stored.
// Each gets the next id; an empty marketoGUID gets a unique one and a zero
// activityDate becomes now. Dates are kept in UTC at second precision, as
// Marketo sends them.
func (s *Server) AddActivities(acts ...Activity) []Activity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addLocked(acts...)
}

func (s *Server) addLocked(acts ...Activity) []Activity {
	now := time.Now()
	out := make([]Activity, 0, len(acts))
	for _, a := range acts {
		a.ID = s.nextActivityID
		s.nextActivityID++
		if a.MarketoGUID == "" {
			a.MarketoGUID = newUUID()
		}
		if a.ActivityDate.IsZero() {
			a.ActivityDate = now
		}
		a.ActivityDate = a.ActivityDate.UTC().Truncate(time.Second)
		a.Attributes = append([]Attribute(nil), a.Attributes...)
		s.acts = append(s.acts, a)
		out = append(out, a)
	}
	return out
}

// AddLeadActivity appends an activity of typeID for leadID, dated now, with
// the primary attribute and attributes Marketo sends for that type, and
// returns it as stored.
func (s *Server) AddLeadActivity(typeID int, leadID int) Activity {
	return s.AddLeadActivityAt(typeID, leadID, time.Time{})
}

// AddLeadActivityAt is AddLeadActivity dated at (now when zero): a test
// can date activities after an instance's creation second without
// waiting for the clock to get there.
func (s *Server) AddLeadActivityAt(typeID int, leadID int, at time.Time) Activity {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := sampleActivity(typeID, int64(leadID), s.nextActivityID)
	a.ActivityDate = at
	return s.addLocked(a)[0]
}

// Activities returns a copy of every stored activity, in order.
func (s *Server) Activities() []Activity {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Activity, len(s.acts))
	copy(out, s.acts)
	return out
}

// sampleActivity builds a realistic activity; n varies the sample values.
func sampleActivity(typeID int, leadID, n int64) Activity {
	a := Activity{LeadID: leadID, ActivityTypeID: typeID}
	switch typeID {
	case TypeVisitWebpage:
		pages := []string{"/", "/pricing", "/blog/marketo-webhooks", "/contact"}
		p := pages[n%int64(len(pages))]
		a.PrimaryAttributeValueID = 100 + n%int64(len(pages))
		a.PrimaryAttributeValue = "www.example.com" + p
		a.Attributes = []Attribute{
			{"Client IP Address", "203.0.113.7"},
			{"Query Parameters", "utm_source=newsletter"},
			{"Referrer URL", "https://www.google.com/"},
			{"User Agent", "Mozilla/5.0 (X11; Linux x86_64)"},
			{"Webpage URL", p},
		}
	case TypeFillOutForm:
		a.PrimaryAttributeValueID = 1001
		a.PrimaryAttributeValue = "Contact Us Form"
		a.Attributes = []Attribute{
			{"Client IP Address", "203.0.113.7"},
			{"Form Fields", `a:2:{s:5:"Email";s:17:"lead@example.com";s:9:"FirstName";s:3:"Ada";}`},
			{"Webpage ID", 103},
		}
	case TypeSendEmail, TypeEmailDelivered, TypeOpenEmail, TypeClickEmail:
		a.PrimaryAttributeValueID = 2001
		a.PrimaryAttributeValue = "Welcome Program.Welcome Email"
		a.Attributes = []Attribute{
			{"Campaign Run ID", 5000 + n},
			{"Choice Number", 0},
			{"Step ID", 12},
		}
	case TypeNewLead:
		a.PrimaryAttributeValueID = leadID
		a.PrimaryAttributeValue = fmt.Sprintf("Lead %d", leadID)
		a.Attributes = []Attribute{
			{"Created Date", time.Now().UTC().Format(time.DateOnly)},
			{"Lead Source", "Website"},
			{"Source Type", "New lead"},
		}
	case TypeChangeDataValue:
		fields := []struct {
			id        int64
			name      string
			old, next string
		}{
			{51, "Email Address", "old@example.com", "new@example.com"},
			{31, "First Name", "Ada", "Grace"},
			{84, "Lead Score", "10", "25"},
			{55, "Job Title", "Engineer", "Architect"},
		}
		f := fields[n%int64(len(fields))]
		a.PrimaryAttributeValueID = f.id
		a.PrimaryAttributeValue = f.name
		a.Attributes = []Attribute{
			{"New Value", f.next},
			{"Old Value", f.old},
			{"Reason", "Form fill-out"},
			{"Source", "Web form fillout"},
		}
	case TypeDeleteLead:
		a.PrimaryAttributeValueID = leadID
		a.PrimaryAttributeValue = fmt.Sprintf("Lead %d", leadID)
		a.Attributes = []Attribute{{"Remove from CRM", false}}
	}
	return a
}

// StartGenerator appends lead activities at about perSecond until ctx is
// done or the server is closed: mostly New Lead and Change Data Value, some
// Delete Lead, always for leads that exist. It returns at once.
func (s *Server) StartGenerator(ctx context.Context, perSecond float64) {
	if perSecond <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.generate(ctx, perSecond)
	}()
}

func (s *Server) generate(ctx context.Context, perSecond float64) {
	interval := max(time.Duration(float64(time.Second)/perSecond), 10*time.Millisecond)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	began := time.Now()
	var added int64
	var leads []int64 // leads this generator created and has not deleted
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case now := <-tick.C:
			due := int64(now.Sub(began).Seconds()*perSecond) - added
			for range due {
				leads = s.generateOne(leads)
				added++
			}
		}
	}
}

func (s *Server) generateOne(leads []int64) []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := rand.IntN(100)
	switch {
	case len(leads) == 0 || p < 45:
		id := s.nextLeadID
		s.nextLeadID++
		s.addLocked(sampleActivity(TypeNewLead, id, s.nextActivityID))
		return append(leads, id)
	case p < 92:
		id := leads[rand.IntN(len(leads))]
		s.addLocked(sampleActivity(TypeChangeDataValue, id, s.nextActivityID))
		return leads
	default:
		i := rand.IntN(len(leads))
		s.addLocked(sampleActivity(TypeDeleteLead, leads[i], s.nextActivityID))
		leads[i] = leads[len(leads)-1]
		return leads[:len(leads)-1]
	}
}

// pageTokenEncoding keeps tokens opaque and URL-safe, like Marketo's.
var pageTokenEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// encodePageToken encodes a position in the activity log and the number of
// pages served since the paging token was made.
func encodePageToken(pos, page int) string {
	return pageTokenEncoding.EncodeToString(fmt.Appendf(nil, "lsfake:%d:%d", pos, page))
}

func decodePageToken(tok string) (pos, page int, ok bool) {
	b, err := pageTokenEncoding.DecodeString(tok)
	if err != nil {
		return 0, 0, false
	}
	rest, found := strings.CutPrefix(string(b), "lsfake:")
	if !found {
		return 0, 0, false
	}
	p, g, found := strings.Cut(rest, ":")
	if !found {
		return 0, 0, false
	}
	pos, err1 := strconv.Atoi(p)
	page, err2 := strconv.Atoi(g)
	if err1 != nil || err2 != nil || pos < 0 || page < 0 {
		return 0, 0, false
	}
	return pos, page, true
}

var sinceLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05Z0700", "2006-01-02T15:04Z07:00", time.DateOnly}

func (s *Server) pagingToken(r *http.Request) envelope {
	raw := r.URL.Query().Get("sinceDatetime")
	if raw == "" {
		return badRequest("sinceDatetime is required")
	}
	var since time.Time
	var err error
	for _, layout := range sinceLayouts {
		if since, err = time.Parse(layout, raw); err == nil {
			break
		}
	}
	if err != nil {
		return badRequest("Invalid sinceDatetime: " + raw)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	pos := len(s.acts)
	for i, a := range s.acts {
		if !a.ActivityDate.Before(since) {
			pos = i
			break
		}
	}
	return envelope{Success: true, NextPageToken: encodePageToken(pos, 0)}
}

func (s *Server) activities(r *http.Request) envelope {
	q := r.URL.Query()
	tok := q.Get("nextPageToken")
	if tok == "" {
		return badRequest("nextPageToken is required")
	}
	pos, page, ok := decodePageToken(tok)
	if !ok {
		return badRequest("Invalid nextPageToken")
	}
	rawIDs := strings.Join(q["activityTypeIds"], ",")
	if rawIDs == "" {
		return badRequest("activityTypeIds is required")
	}
	types := make(map[int]bool)
	for f := range strings.SplitSeq(rawIDs, ",") {
		id, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || id <= 0 {
			return badRequest("Invalid activityTypeIds: " + rawIDs)
		}
		types[id] = true
	}
	if len(types) > MaxActivityTypeIDs {
		return badRequest(fmt.Sprintf("Too many activityTypeIds, at most %d allowed", MaxActivityTypeIDs))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	pos = min(pos, len(s.acts))
	more := true
	if n := s.emptyPageEvery; n > 0 && (page+1)%n == 0 && pos < len(s.acts) {
		return envelope{Success: true, NextPageToken: encodePageToken(pos, page+1), MoreResult: &more}
	}
	var out []Activity
	for pos < len(s.acts) && len(out) < PageSize {
		if a := s.acts[pos]; types[a.ActivityTypeID] {
			out = append(out, a)
		}
		pos++
	}
	more = pos < len(s.acts)
	env := envelope{Success: true, NextPageToken: encodePageToken(pos, page+1), MoreResult: &more}
	if len(out) > 0 {
		env.Result = out
	}
	return env
}

type typeAttribute struct {
	Name     string `json:"name"`
	DataType string `json:"dataType"`
}

type activityType struct {
	ID               int             `json:"id"`
	Name             string          `json:"name"`
	Description      string          `json:"description"`
	PrimaryAttribute typeAttribute   `json:"primaryAttribute"`
	Attributes       []typeAttribute `json:"attributes,omitempty"`
}

// activityTypes is what types.json answers; never modified.
var activityTypes = []activityType{
	{TypeVisitWebpage, "Visit Webpage", "User visits a web page", typeAttribute{"Webpage ID", "integer"}, []typeAttribute{
		{"Client IP Address", "string"}, {"Query Parameters", "string"}, {"Referrer URL", "string"},
		{"User Agent", "string"}, {"Webpage URL", "string"},
	}},
	{TypeFillOutForm, "Fill Out Form", "User fills out and submits form on web page", typeAttribute{"Webform ID", "integer"}, []typeAttribute{
		{"Client IP Address", "string"}, {"Form Fields", "text"}, {"Webpage ID", "integer"},
	}},
	{TypeSendEmail, "Send Email", "Send Marketo Email to a person", typeAttribute{"Mailing ID", "integer"}, []typeAttribute{
		{"Campaign Run ID", "integer"}, {"Choice Number", "integer"}, {"Step ID", "integer"},
	}},
	{TypeEmailDelivered, "Email Delivered", "Marketo Email is delivered to a person", typeAttribute{"Mailing ID", "integer"}, []typeAttribute{
		{"Campaign Run ID", "integer"}, {"Choice Number", "integer"}, {"Step ID", "integer"},
	}},
	{TypeOpenEmail, "Open Email", "User opens Marketo Email", typeAttribute{"Mailing ID", "integer"}, []typeAttribute{
		{"Campaign Run ID", "integer"}, {"Choice Number", "integer"}, {"Step ID", "integer"},
	}},
	{TypeClickEmail, "Click Email", "User clicks on a link in a Marketo Email", typeAttribute{"Mailing ID", "integer"}, []typeAttribute{
		{"Campaign Run ID", "integer"}, {"Choice Number", "integer"}, {"Link", "string"}, {"Step ID", "integer"},
	}},
	{TypeNewLead, "New Lead", "New person/record is added to the lead database", typeAttribute{"Lead ID", "integer"}, []typeAttribute{
		{"Created Date", "date"}, {"Lead Source", "string"}, {"Source Type", "string"},
	}},
	{TypeChangeDataValue, "Change Data Value", "Changed attribute value for a person", typeAttribute{"Attribute Name", "reference"}, []typeAttribute{
		{"New Value", "string"}, {"Old Value", "string"}, {"Reason", "string"}, {"Source", "string"},
	}},
	{TypeDeleteLead, "Delete Lead", "Delete person from the lead database", typeAttribute{"Lead ID", "integer"}, []typeAttribute{
		{"Remove from CRM", "boolean"},
	}},
}

package marketo

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MaxActivityTypeIDs is the most activity types one Activities call may ask for.
const MaxActivityTypeIDs = 10

// Page is one page of activities.
type Page struct {
	Activities []Activity
	// NextPageToken continues after this page; persist it and start from
	// it next time. Never empty.
	NextPageToken string
	// MoreResult reports that more activities may follow right now. A page
	// can be short, even empty, while MoreResult is true: keep paging.
	MoreResult bool
}

// Activity is one Marketo activity: the fields the gateway needs, and Raw
// for everything else.
type Activity struct {
	ID int64
	// MarketoGUID is the unique id of the activity; dedupe on it.
	MarketoGUID string
	LeadID      int64
	// ActivityDate is zero if Marketo sent a date that could not be read.
	ActivityDate   time.Time
	ActivityTypeID int
	// Raw is the activity exactly as Marketo sent it.
	Raw json.RawMessage
}

// ActivityType describes an activity type id; Marketo's list changes
// rarely, so callers cache it (for a day).
type ActivityType struct {
	ID          int    `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description"`
}

// PagingToken returns the token that starts paging at the first activity
// dated since or later.
func (c *Client) PagingToken(ctx context.Context, since time.Time) (string, error) {
	const path = "/rest/v1/activities/pagingtoken.json"
	env, err := c.get(ctx, path, url.Values{"sinceDatetime": {since.UTC().Format(time.RFC3339)}})
	if err != nil {
		return "", err
	}
	if env.NextPageToken == "" {
		return "", fmt.Errorf("%w: GET %s: answer has no nextPageToken", ErrTransient, path)
	}
	return env.NextPageToken, nil
}

// Activities returns the page of activities of the given types (1 to
// MaxActivityTypeIDs of them) that pageToken points at.
func (c *Client) Activities(ctx context.Context, pageToken string, typeIDs []int) (Page, error) {
	const path = "/rest/v1/activities.json"
	if pageToken == "" {
		return Page{}, fmt.Errorf("%w: activities: empty page token", ErrBadRequest)
	}
	if len(typeIDs) == 0 || len(typeIDs) > MaxActivityTypeIDs {
		return Page{}, fmt.Errorf("%w: activities: %d activity types asked for, want 1 to %d", ErrBadRequest, len(typeIDs), MaxActivityTypeIDs)
	}
	ids := make([]string, len(typeIDs))
	for i, id := range typeIDs {
		ids[i] = strconv.Itoa(id)
	}
	env, err := c.get(ctx, path, url.Values{
		"nextPageToken":   {pageToken},
		"activityTypeIds": {strings.Join(ids, ",")},
	})
	if err != nil {
		return Page{}, err
	}
	page := Page{NextPageToken: env.NextPageToken, MoreResult: env.MoreResult}
	if page.NextPageToken == "" {
		if page.MoreResult {
			return Page{}, fmt.Errorf("%w: GET %s: moreResult without nextPageToken", ErrTransient, path)
		}
		// Nothing new and no token: the one we came with still holds.
		page.NextPageToken = pageToken
	}
	var raws []json.RawMessage
	if err := unmarshalResult(env.Result, &raws); err != nil {
		return Page{}, fmt.Errorf("%w: GET %s: %w", ErrUnreachable, path, err)
	}
	page.Activities = make([]Activity, 0, len(raws))
	for _, raw := range raws {
		var a struct {
			ID             int64  `json:"id"`
			MarketoGUID    string `json:"marketoGUID"`
			LeadID         int64  `json:"leadId"`
			ActivityDate   string `json:"activityDate"`
			ActivityTypeID int    `json:"activityTypeId"`
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return Page{}, fmt.Errorf("%w: GET %s: activity %s: %w", ErrUnreachable, path, raw, err)
		}
		page.Activities = append(page.Activities, Activity{
			ID:             a.ID,
			MarketoGUID:    a.MarketoGUID,
			LeadID:         a.LeadID,
			ActivityDate:   parseActivityDate(a.ActivityDate),
			ActivityTypeID: a.ActivityTypeID,
			Raw:            raw,
		})
	}
	return page, nil
}

// ActivityTypes lists the activity types of the subscription.
func (c *Client) ActivityTypes(ctx context.Context) ([]ActivityType, error) {
	const path = "/rest/v1/activities/types.json"
	env, err := c.get(ctx, path, nil)
	if err != nil {
		return nil, err
	}
	var types []ActivityType
	if err := unmarshalResult(env.Result, &types); err != nil {
		return nil, fmt.Errorf("%w: GET %s: %w", ErrUnreachable, path, err)
	}
	return types, nil
}

// unmarshalResult reads the result list; Marketo leaves it out when empty.
func unmarshalResult(result json.RawMessage, v any) error {
	if len(result) == 0 || string(result) == "null" {
		return nil
	}
	if err := json.Unmarshal(result, v); err != nil {
		return fmt.Errorf("result: %w", err)
	}
	return nil
}

// activityDateLayouts are the forms Marketo has used for activityDate.
var activityDateLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05Z0700"}

func parseActivityDate(s string) time.Time {
	for _, layout := range activityDateLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t
		}
	}
	return time.Time{}
}

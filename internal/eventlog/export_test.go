package eventlog

import "context"

// RedeliveryJobOnly is Redeliver's first step alone (the job published,
// the state not marked pending), as a process killed between its two
// writes leaves the log.
func RedeliveryJobOnly(ctx context.Context, l *Log, eventID string) error {
	r, _, err := l.state(ctx, eventID)
	if err != nil {
		return err
	}
	return l.publishRedelivery(ctx, r, redelivery{EventID: eventID, Seq: r.Seq, Gen: r.Gen + 1, Request: "killed"})
}

package apptest

import "time"

// TryNext waits for the next message; false when the subscription closed
// or nothing came within timeout.
func (s *Sub) TryNext(timeout time.Duration) (Message, bool) {
	select {
	case m, ok := <-s.msgs:
		return m, ok
	case <-time.After(timeout):
		return Message{}, false
	}
}

package notify

import "time"

// BackoffAfter exposes the retry schedule to the tests.
func BackoffAfter(base time.Duration, attempt int) time.Duration {
	return (&Notifier{o: Options{RetryBase: base}}).backoff(attempt)
}

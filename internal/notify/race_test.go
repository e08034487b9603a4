//go:build race

package notify_test

// concurrentEvents sizes TestConcurrentDeliveries. Under the race detector
// the embedded store's updates by _id cost ~140ms each at 200 events (they
// scan the collection, and SQLite runs instrumented), so 200 events would
// take about 45s; 60 keep the same interleavings in a few seconds.
const concurrentEvents = 60

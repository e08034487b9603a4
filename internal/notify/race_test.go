//go:build race

package notify_test

// concurrentEvents sizes TestConcurrentDeliveries: fewer under the race
// detector, which slows every part down, with the same interleavings.
const concurrentEvents = 60

//go:build !race

package notify_test

// concurrentEvents sizes TestConcurrentDeliveries (see race_test.go).
const concurrentEvents = 200

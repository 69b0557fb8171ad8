package wire

// Internals that the external tests (package wire_test) check against.
const (
	MaxUnclaimedFDs = maxUnclaimedFDs
)

// EncodedFrame is encodedFrame (fdinbox_test.go) for the external tests.
var EncodedFrame = encodedFrame

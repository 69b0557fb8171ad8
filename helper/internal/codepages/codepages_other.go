//go:build !linux

package codepages

// Release does nothing outside Linux: the mappings are not read from /proc there.
func Release() (uint64, error) { return 0, nil }

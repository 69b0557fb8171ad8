package codepages

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Release unmaps the pages of the executable's read-only mappings (see the package comment)
// and returns the size of the mappings it covered, in bytes. Writable mappings (the data
// segment) are never touched: MADV_DONTNEED would throw away what the program wrote there.
// Nor is a read-only mapping that holds private copies of written pages (smaps' Anonymous
// above 0): a PIE build's relocated read-only data is such a mapping, and dropping its pages
// would bring back the file's unrelocated contents.
func Release() (uint64, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("finding the executable: %w", err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("reading the mappings: %w", err)
	}
	defer f.Close()
	var out uint64
	var start, end uintptr
	candidate := false
	release := func() error {
		if !candidate {
			return nil
		}
		candidate = false
		// The raw call: unix.Madvise takes a []byte, and this range is no Go memory.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_DONTNEED); errno != 0 {
			return fmt.Errorf("madvise %#x-%#x: %w", start, end, errno)
		}
		out += uint64(end - start)
		return nil
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "Anonymous:"); ok {
			// Anonymous comes before the next mapping's header: decide on this one now.
			if fields := strings.Fields(rest); len(fields) == 0 || fields[0] != "0" {
				candidate = false
			}
			if err := release(); err != nil {
				return out, err
			}
			continue
		}
		if s, e, ok := readOnlyMappingOf(line, exe); ok {
			start, end, candidate = s, e, true
		}
	}
	return out, sc.Err()
}

// readOnlyMappingOf parses one line of /proc/self/maps ("start-end perms offset dev inode
// path") and reports a private mapping of path that is neither writable nor shared.
func readOnlyMappingOf(line, path string) (start, end uintptr, ok bool) {
	fields := strings.Fields(line)
	if len(fields) != 6 || fields[5] != path {
		return 0, 0, false
	}
	perms := fields[1]
	if len(perms) != 4 || perms[0] != 'r' || perms[1] != '-' || perms[3] != 'p' {
		return 0, 0, false
	}
	lo, hi, found := strings.Cut(fields[0], "-")
	a, errA := strconv.ParseUint(lo, 16, 64)
	b, errB := strconv.ParseUint(hi, 16, 64)
	if !found || errA != nil || errB != nil || b <= a {
		return 0, 0, false
	}
	return uintptr(a), uintptr(b), true
}

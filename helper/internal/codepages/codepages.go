// Package codepages lets a process give back the pages of its own executable that it maps but
// does not use.
//
// A Go binary's code and read-only data are mapped from the file. At start-up the kernel maps
// far more of them than the program touches (fault-around, and page-cache folios mapped
// whole): a tsproc helper on linux/amd64 has ~23 MB of its binary mapped after start-up, of
// which it uses ~10 MB while idle. Release drops the mappings of every read-only mapping of
// the executable (MADV_DONTNEED, which for a private, never-written file mapping only
// unmaps: the contents stay in the page cache and fault back in on the next access), so
// that afterwards only the pages the process touches again count in its RSS, and the kernel
// may reclaim the rest under memory pressure.
package codepages

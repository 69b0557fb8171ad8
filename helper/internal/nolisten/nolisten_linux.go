package nolisten

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Forbid makes listen(2) fail with EPERM in every thread of this process, for the rest
// of its life, with a seccomp filter. The node helper needs no kernel listener: tailnet
// listeners live in netstack, the LocalAPI in memory, the control channel on a socketpair.
// tsnet's peerAPI, though, opens a TCP listener on all host interfaces (0.0.0.0:<port>) that
// it never uses, since netstack serves the peerAPI; when listen fails it falls back to a
// netstack-only listener, by design ("harmless (netstack available)"). So the only way into
// a node is the tailnet (docs/design.md §8), whatever a dependency tries.
func Forbid() error {
	var arch uint32
	switch runtime.GOARCH {
	case "amd64":
		arch = unix.AUDIT_ARCH_X86_64
	case "arm64":
		arch = unix.AUDIT_ARCH_AARCH64
	default:
		// 32-bit x86 multiplexes listen through socketcall(2); other architectures are
		// not built. Better no filter than a wrong one.
		return fmt.Errorf("no seccomp filter for %s: %w", runtime.GOARCH, errors.ErrUnsupported)
	}
	filter := []unix.SockFilter{
		// A = seccomp_data.arch: only filter the native calling convention.
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 4},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 3, K: arch},
		// A = seccomp_data.nr
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_LISTEN},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	// Needed to install a filter without CAP_SYS_ADMIN; the helper never gains privileges.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_NO_NEW_PRIVS: %w", err)
	}
	// TSYNC: every thread the Go runtime has started gets the filter too (new ones inherit it).
	tid, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	switch {
	case errno != 0:
		return fmt.Errorf("seccomp: %w", errno)
	case tid != 0:
		return fmt.Errorf("seccomp: thread %d could not take the filter", tid)
	}
	return nil
}

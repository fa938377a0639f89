package shm

import "golang.org/x/sys/unix"

// osYield gives this thread's core to another runnable thread, if there
// is one (sched_yield).
func osYield() {
	_, _, _ = unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
}

package main

import "syscall"

// rankProcAttr puts a rank in its own process group, and has the kernel kill
// it if ringrun dies first.
func rankProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER of prctl(2).
const prSetChildSubreaper = 36

// becomeSubreaper makes the processes a rank leaves behind ringrun's
// children when their parent dies, rather than init's: ringrun reaps them
// when it stops a job, so that none is left when it exits.
func becomeSubreaper() {
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
}

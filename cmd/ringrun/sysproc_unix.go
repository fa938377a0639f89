//go:build unix && !linux

package main

import "syscall"

// rankProcAttr puts a rank in its own process group. Outside Linux there is
// no parent-death signal: a ringrun killed with SIGKILL leaves its ranks to
// their communicator's heartbeat and timeout.
func rankProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// becomeSubreaper does nothing outside Linux (no PR_SET_CHILD_SUBREAPER).
func becomeSubreaper() {}

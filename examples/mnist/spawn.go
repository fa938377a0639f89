package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
)

// spawn starts o.np copies of this program as the ranks of a local job,
// with the environment ringrun would give them (rank 0 serves the
// rendezvous), and waits for them. When one fails, the others are stopped.
// Each rank gets GOMAXPROCS = CPUs/np (at least 1) unless it is set.
func spawn(ctx context.Context, o options, args []string, stdout, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	token, jobID := randomHex(32), "mnist-"+randomHex(6)
	threads := ""
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		threads = "GOMAXPROCS=" + strconv.Itoa(max(1, runtime.NumCPU()/o.np))
	}
	cmds := make([]*exec.Cmd, o.np)
	for r := range o.np {
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Env = append(os.Environ(),
			"RINGO_RANK="+strconv.Itoa(r),
			"RINGO_WORLD_SIZE="+strconv.Itoa(o.np),
			"RINGO_LOCAL_RANK="+strconv.Itoa(r),
			"RINGO_LOCAL_WORLD_SIZE="+strconv.Itoa(o.np),
			"RINGO_ADDR="+addr,
			"RINGO_TOKEN="+token,
			"RINGO_JOB_ID="+jobID,
		)
		if threads != "" {
			cmd.Env = append(cmd.Env, threads)
		}
		cmd.Stdout, cmd.Stderr = stdout, stderr
		cmds[r] = cmd
	}
	for r, cmd := range cmds {
		if err := cmd.Start(); err != nil {
			for _, started := range cmds[:r] {
				_ = started.Process.Kill()
				_ = started.Wait()
			}
			return fmt.Errorf("starting rank %d: %w", r, err)
		}
	}
	type exit struct {
		rank int
		err  error
	}
	exits := make(chan exit, len(cmds))
	for r, cmd := range cmds {
		go func() { exits <- exit{r, cmd.Wait()} }()
	}
	var first error
	for range cmds {
		e := <-exits
		if e.err != nil && first == nil {
			first = fmt.Errorf("rank %d: %w", e.rank, e.err)
			for r, cmd := range cmds {
				if r != e.rank {
					_ = cmd.Process.Kill() // ours; one that has exited already is fine
				}
			}
		}
	}
	return first
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

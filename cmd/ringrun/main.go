//go:build unix

// Command ringrun starts the ranks of a ringo job, on this machine or on
// many, and waits for them: an mpirun/torchrun-style launcher.
//
//	ringrun -np 4 ./train
//	ringrun --hosts node1:4,node2:4 --addr 10.0.0.1 -- ./train --epochs 3
//	ringrun --hostfile hosts.txt --max-restarts 2 --output-dir logs -- ./train
//
// Every rank gets the RINGO_* environment collective.Init reads, with a fresh
// random job token (passed in the environment, or on the agent's standard
// input for other hosts; never on a command line). ringrun is the job's
// leader: it serves the rendezvous itself at RINGO_ADDR, an address of the
// machine it runs on (--addr), and tells the ranks so
// (RINGO_RENDEZVOUS_EXTERNAL=1): every rank, rank 0 included, only joins.
// Its status line counts the ranks that have joined. Output lines are
// prefixed with their rank. When a rank fails, ringrun says which and how,
// stops the others and exits non-zero; --max-restarts reruns the whole job.
// Run ringrun -h for the flags.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	becomeSubreaper()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, isTerminal(os.Stderr), sigs))
}

// run is ringrun with its arguments, outputs and signals given; it returns
// the exit code.
func run(args []string, stdout, stderr io.Writer, tty bool, sigs <-chan os.Signal) int {
	o, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ringrun: %v\n", err)
		return 2
	}
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(stderr, "ringrun: %v\n", err)
		return 1
	}
	r := &runner{
		o:       o,
		out:     newOutput(stdout, stderr, tty),
		ps:      place(o.np, o.hosts),
		sigs:    sigs,
		workDir: wd,
		start:   time.Now(),
	}
	return r.run()
}

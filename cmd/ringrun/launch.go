//go:build unix

package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/transport"
)

// jobEnv is what every rank of one attempt shares.
type jobEnv struct {
	size     int
	addr     string // rendezvous host:port, served by ringrun
	token    string
	jobID    string
	restarts int // RINGO_RESTART_COUNT
}

// newJobEnv makes a fresh token and job id for one attempt, whose
// rendezvous ringrun serves at addr: ranks of an earlier attempt cannot
// join a later one.
func newJobEnv(addr string, size, restarts int) jobEnv {
	return jobEnv{
		size:     size,
		addr:     addr,
		token:    randomHex(32),
		jobID:    "ringrun-" + randomHex(6) + "-" + strconv.Itoa(restarts),
		restarts: restarts,
	}
}

// listenRendezvous opens the listener ringrun serves one attempt's
// rendezvous on, at --port (or any free port), and returns it with the
// address the ranks dial. An IP address is listened on as it is; for a
// host name, ringrun listens on every interface, since the ranks may
// resolve it to any of this machine's addresses.
func listenRendezvous(o *options, ps []placement) (net.Listener, string, error) {
	host, err := rendezvousHost(o, ps)
	if err != nil {
		return nil, "", err
	}
	listenHost := host
	if net.ParseIP(host) == nil {
		listenHost = ""
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(listenHost, strconv.Itoa(o.port)))
	if err != nil {
		if o.addr != "" {
			return nil, "", fmt.Errorf("serving the rendezvous: %w (ringrun serves it itself: --addr must be an address of this machine that every rank can reach)", err)
		}
		return nil, "", fmt.Errorf("serving the rendezvous: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	return ln, net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// rendezvousHost is the address of this machine (where ringrun serves the
// rendezvous) that the ranks dial: --addr, else --iface's address, else
// 127.0.0.1 when every rank runs here, else this machine's name.
func rendezvousHost(o *options, ps []placement) (string, error) {
	switch {
	case o.addr != "":
		return o.addr, nil
	case o.iface != "":
		h, err := transport.InterfaceAddr(o.iface)
		if err != nil {
			return "", fmt.Errorf("%w (ringrun serves the rendezvous on this machine: --addr gives its address)", err)
		}
		return h, nil
	case allLocal(ps):
		return "127.0.0.1", nil
	}
	return os.Hostname()
}

func allLocal(ps []placement) bool {
	for _, p := range ps {
		if p.host != "" && !isLocalHost(p.host) {
			return false
		}
	}
	return true
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics rather than return an error)
	return hex.EncodeToString(b)
}

// rankEnv is the environment ringrun sets for rank p, besides the token.
func rankEnv(o *options, j jobEnv, p placement) []string {
	env := []string{
		"RINGO_RANK=" + strconv.Itoa(p.rank),
		"RINGO_WORLD_SIZE=" + strconv.Itoa(j.size),
		"RINGO_LOCAL_RANK=" + strconv.Itoa(p.localRank),
		"RINGO_LOCAL_WORLD_SIZE=" + strconv.Itoa(p.localSize),
		"RINGO_ADDR=" + j.addr,
		"RINGO_RENDEZVOUS_EXTERNAL=1", // ringrun serves it, not rank 0
		"RINGO_JOB_ID=" + j.jobID,
		"RINGO_RESTART_COUNT=" + strconv.Itoa(j.restarts),
	}
	if o.transport != "" {
		env = append(env, "RINGO_TRANSPORT="+o.transport)
	}
	if o.tls {
		env = append(env, "RINGO_TLS=1")
	}
	if o.iface != "" {
		env = append(env, "RINGO_IFACE="+o.iface)
	}
	if o.timeout != "" {
		env = append(env, "RINGO_TIMEOUT="+o.timeout)
	}
	return env
}

// threadsEnv shares this machine's CPUs among its ranks: GOMAXPROCS =
// max(1, cpus/local ranks), unless the user set GOMAXPROCS (in ringrun's
// environment or with -x). Without it, every rank's Go runtime keeps as many
// threads as there are CPUs, and their spinning starves the other ranks: on
// 2 CPUs with 2 ranks a 4-byte AllReduce took 166 us with GOMAXPROCS=2 and
// 55 us with 1 (ringrun -np 2 examples/allreduce). torchrun sets
// OMP_NUM_THREADS=1 for the same reason.
func threadsEnv(o *options, p placement, cpus int) []string {
	if _, set := os.LookupEnv("GOMAXPROCS"); set {
		return nil
	}
	for _, v := range o.env {
		if v.name == "GOMAXPROCS" {
			return nil
		}
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(max(1, cpus/max(1, p.localSize)))}
}

// userEnv is what -x asks for: NAME=VALUE, or NAME with ringrun's value
// (NAME unset in ringrun is left unset).
func userEnv(vars []envVar) []string {
	var env []string
	for _, v := range vars {
		switch {
		case !v.forward:
			env = append(env, v.name+"="+v.value)
		default:
			if val, ok := os.LookupEnv(v.name); ok {
				env = append(env, v.name+"="+val)
			}
		}
	}
	return env
}

// forwardedRingoEnv is ringrun's own RINGO_* settings (RINGO_DEBUG,
// RINGO_ALGO, ...) that a remote rank would otherwise not see. The ones
// ringrun sets per job are left out.
func forwardedRingoEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "RINGO_") {
			continue
		}
		switch name {
		case "RINGO_RANK", "RINGO_WORLD_SIZE", "RINGO_LOCAL_RANK", "RINGO_LOCAL_WORLD_SIZE",
			"RINGO_ADDR", "RINGO_RENDEZVOUS_EXTERNAL", "RINGO_TOKEN", "RINGO_JOB_ID", "RINGO_RESTART_COUNT":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// remoteWrapper runs on the rank's host as sh -c WRAPPER ringrun-rank DIR
// GRACE PROGRAM ARGS... It enters DIR if it exists (as mpirun does), reads
// the job token from the first line of its standard input (so the token
// never appears on a command line), and runs the program with the rest of
// that input watched: when it closes (ringrun or the agent's connection
// died, or ringrun stops the job), the program gets SIGTERM and, GRACE
// seconds later, SIGKILL. The wrapper forwards
// SIGHUP/SIGINT/SIGTERM to the program and exits with the program's exit
// code, or 128+N if signal N killed it (as a shell does; ssh passes that
// on, where it would turn a remote signal into its own code 255). No single
// quotes, so it can be shell-quoted trivially.
const remoteWrapper = `cd "$1" 2>/dev/null; g=$2; shift 2
IFS= read -r RINGO_TOKEN || { echo "ringrun: no job token on standard input" >&2; exit 127; }
export RINGO_TOKEN
exec 3<&0
"$@" 0</dev/null 3<&- &
p=$!
( while IFS= read -r _; do :; done; kill -TERM $p; sleep $g; kill -KILL $p ) <&3 >/dev/null 2>&1 &
w=$!
exec 3<&-
t=0
trap 't=1; kill -TERM $p 2>/dev/null' HUP INT TERM
while :; do t=0; s=0; wait $p 2>/dev/null || s=$?; [ $t = 1 ] || break; done
trap - HUP INT TERM
kill $w 2>/dev/null
exit $s`

// rankCommand builds the process of rank p: the program itself on this
// machine, or the agent running the wrapper on p's host. stdinToken tells
// whether the token is to be written to the process's standard input.
func rankCommand(o *options, j jobEnv, p placement, workDir string) (cmd *exec.Cmd, stdinToken bool) {
	if p.host == "" || isLocalHost(p.host) {
		cmd = exec.Command(o.program[0], o.program[1:]...)
		env := append(os.Environ(), rankEnv(o, j, p)...)
		env = append(env, userEnv(o.env)...)
		env = append(env, threadsEnv(o, p, runtime.NumCPU())...)
		cmd.Env = append(env, "RINGO_TOKEN="+j.token)
	} else {
		remote := []string{"env"}
		remote = append(remote, forwardedRingoEnv()...)
		remote = append(remote, userEnv(o.env)...)
		remote = append(remote, rankEnv(o, j, p)...)
		grace := strconv.Itoa(int((o.grace + time.Second - 1) / time.Second))
		remote = append(remote, "sh", "-c", remoteWrapper, "ringrun-rank", workDir, grace)
		remote = append(remote, o.program...)
		argv := append(append([]string{}, o.agent[1:]...), p.host)
		if o.agentQuote {
			argv = append(argv, shellJoin(remote))
		} else {
			argv = append(argv, remote...)
		}
		cmd = exec.Command(o.agent[0], argv...)
		// The agent runs with ringrun's environment, without the token.
		cmd.Env = withoutVar(os.Environ(), "RINGO_TOKEN")
		stdinToken = true
	}
	// Its own process group, so that stopping a rank stops its children
	// too, and a Ctrl-C at the terminal reaches ringrun only (which then
	// stops every rank in order). If ringrun dies without stopping it, the
	// kernel kills it (on Linux).
	cmd.SysProcAttr = rankProcAttr()
	return cmd, stdinToken
}

func withoutVar(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// shellJoin quotes words for a POSIX shell (the remote end of ssh).
func shellJoin(words []string) string {
	var b strings.Builder
	for i, w := range words {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(shellQuote(w))
	}
	return b.String()
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '_' || r == '-' || r == '.' || r == '/' || r == '=' || r == ':' || r == ',' || r == '+' || r == '@' ||
			'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

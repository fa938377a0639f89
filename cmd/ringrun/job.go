//go:build unix

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/collective/rendezvous"
	"github.com/ringo-ml/ringo/transport"
)

// drainTimeout bounds how long ringrun reads a rank's output after every
// rank has exited: a process that escaped its process group and still holds
// the pipe does not keep ringrun waiting.
const drainTimeout = 2 * time.Second

// runner runs a job, restarting it after failures if asked.
type runner struct {
	o       *options
	out     *output
	ps      []placement
	sigs    <-chan os.Signal
	workDir string
	files   [][2]*os.File // --output-dir: per rank, stdout and stderr
	start   time.Time
}

// rankProc is one started rank of one attempt.
type rankProc struct {
	p      placement
	cmd    *exec.Cmd
	stdin  *os.File    // token pipe of an agent rank; closed when it exits or is stopped
	pipes  [2]*os.File // read ends of stdout and stderr
	exited bool
	fate   fate // how it ended, once exited
}

// fate is how one rank of an attempt ended, for the account ringrun gives
// of every rank when the attempt fails.
type fate struct {
	how     string // "exited with code 1", "was killed by signal SIGTERM"
	stopped bool   // by ringrun, stopping the job
	first   bool   // the failure that stopped the job
}

type exitEvent struct {
	idx   int
	state *os.ProcessState
}

// outcome is how an attempt ended.
type outcome struct {
	ok          bool
	why         string    // the first failure, for the restart message
	code        int       // ringrun's exit code
	interrupted os.Signal // ringrun was told to stop
}

func (r *runner) run() int {
	if r.o.outputDir != "" {
		if err := r.openFiles(); err != nil {
			r.out.info("%v", err)
			return 1
		}
		defer r.closeFiles()
	}
	for restarts := 0; ; restarts++ {
		res := r.attempt(restarts)
		switch {
		case res.ok:
			return 0
		case res.interrupted != nil:
			return res.code
		case restarts >= r.o.maxRestarts:
			if r.o.maxRestarts > 0 {
				r.out.info("giving up after %d restarts", restarts)
			}
			return res.code
		}
		r.out.info("restarting the job (restart %d of %d) after: %s", restarts+1, r.o.maxRestarts, res.why)
		for _, f := range r.files {
			for _, file := range f {
				fmt.Fprintf(file, "--- ringrun: restart %d ---\n", restarts+1)
			}
		}
	}
}

func (r *runner) openFiles() error {
	if err := os.MkdirAll(r.o.outputDir, 0o755); err != nil {
		return fmt.Errorf("--output-dir: %w", err)
	}
	r.files = make([][2]*os.File, len(r.ps))
	for i := range r.ps {
		for s, name := range []string{"stdout", "stderr"} {
			f, err := os.Create(filepath.Join(r.o.outputDir, fmt.Sprintf("rank.%d.%s", i, name)))
			if err != nil {
				return fmt.Errorf("--output-dir: %w", err)
			}
			r.files[i][s] = f
		}
	}
	return nil
}

func (r *runner) closeFiles() {
	for _, f := range r.files {
		for _, file := range f {
			if file != nil {
				_ = file.Close()
			}
		}
	}
}

// attempt runs the job once: it starts every rank, waits for all of them,
// and stops them all at the first failure or at a signal.
func (r *runner) attempt(restarts int) outcome {
	n := len(r.ps)
	ln, addr, err := listenRendezvous(r.o, r.ps)
	if err != nil {
		r.out.info("%v", err)
		return outcome{why: err.Error(), code: 1}
	}
	j := newJobEnv(addr, n, restarts)
	rv := r.serveRendezvous(ln, j)
	defer rv.stop()
	joined := make([]bool, n)
	njoined := 0
	procs := make([]*rankProc, 0, n)
	exits := make(chan exitEvent, n)
	var readers sync.WaitGroup
	var (
		res      outcome
		stopping bool
		stopSig  = syscall.SIGTERM
	)
	fail := func(why string, code int) {
		if !stopping {
			res.why, res.code = why, code
			stopping = true
		}
	}

	for _, p := range r.ps {
		select {
		case s := <-r.sigs:
			res.interrupted, res.code = s, 128+signum(s)
			if s == os.Interrupt {
				stopSig = syscall.SIGINT
			}
			r.out.info("%s: stopping the job", signalName(s))
			stopping = true
		default:
		}
		if stopping {
			break
		}
		rp, err := r.startRank(j, p, exits, &readers)
		if err != nil {
			why := fmt.Sprintf("rank %d%s could not be started: %v", p.rank, onHost(p), err)
			r.out.info("%s", why)
			fail(why, 127)
			break
		}
		procs = append(procs, rp)
	}
	if !stopping && !r.o.quiet {
		r.out.info("started %s%s (job %s, rendezvous %s)", plural(n, "rank"), r.hostSummary(), j.jobID, j.addr)
	}

	var killTimer <-chan time.Time
	stop := func(sig syscall.Signal) {
		for _, rp := range procs {
			_ = syscall.Kill(-rp.cmd.Process.Pid, sig)
			if rp.stdin != nil {
				_ = rp.stdin.Close() // a remote rank's watchdog stops it
				rp.stdin = nil
			}
		}
	}
	running := len(procs)
	if stopping && running > 0 {
		stop(stopSig)
		killTimer = time.After(r.o.grace)
	}
	var tick <-chan time.Time
	if r.out.tty {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		tick = t.C
	}
	// notJoined says which ranks had not joined the rendezvous when the
	// job failed, if others had (so the program does join).
	notJoined := func() {
		if njoined == 0 || njoined == n {
			return
		}
		var missing []string
		for rank, ok := range joined {
			if !ok {
				missing = append(missing, strconv.Itoa(rank))
			}
		}
		noun := "ranks"
		if len(missing) == 1 {
			noun = "rank"
		}
		r.out.info("%s %s had not joined the rendezvous", noun, strings.Join(missing, ","))
	}
	r.showStatus(njoined, running, n, restarts, stopping)
	for running > 0 {
		select {
		case rank := <-rv.joined:
			if !joined[rank] {
				joined[rank] = true
				njoined++
			}
		case err := <-rv.failed:
			if stopping {
				break
			}
			why := fmt.Sprintf("the rendezvous failed: %v", err)
			r.out.info("%s", why)
			notJoined()
			fail(why, 1)
			r.out.info("stopping %s (%s, SIGKILL after %v)", plural(running, "rank"), signalName(stopSig), r.o.grace)
			stop(stopSig)
			killTimer = time.After(r.o.grace)
		case e := <-exits:
			running--
			rp := procs[e.idx]
			rp.exited = true
			if rp.stdin != nil {
				_ = rp.stdin.Close()
				rp.stdin = nil
			}
			if e.state.Success() {
				rp.fate = fate{how: "exited with code 0"}
				break
			}
			how, code := describeExit(e.state, rp.p.host != "" && !isLocalHost(rp.p.host))
			rp.fate = fate{how: how, stopped: stopping && stoppedBy(e.state, stopSig)}
			if stopping {
				if !r.o.quiet && res.interrupted == nil && !stoppedBy(e.state, stopSig) {
					r.out.info("rank %d%s %s while the job was stopping", rp.p.rank, onHost(rp.p), how)
				}
				break
			}
			why := fmt.Sprintf("rank %d%s (pid %d) %s", rp.p.rank, onHost(rp.p), rp.cmd.Process.Pid, how)
			if code == 255 && rp.p.host != "" && !isLocalHost(rp.p.host) {
				why += " (the agent " + r.o.agent[0] + " may have failed to reach the host)"
			}
			r.out.info("%s", why)
			notJoined()
			fail(why, code)
			rp.fate.first = true
			if running > 0 {
				r.out.info("stopping the other %s (%s, SIGKILL after %v)", plural(running, "rank"), signalName(stopSig), r.o.grace)
				stop(stopSig)
				killTimer = time.After(r.o.grace)
			}
		case s := <-r.sigs:
			if stopping {
				r.out.info("%s again: killing every rank", signalName(s))
				stop(syscall.SIGKILL)
				break
			}
			res.interrupted, res.code = s, 128+signum(s)
			if s == os.Interrupt {
				stopSig = syscall.SIGINT
			}
			stopping = true
			r.out.info("%s: stopping %s (%s, SIGKILL after %v)", signalName(s), plural(running, "rank"), signalName(stopSig), r.o.grace)
			stop(stopSig)
			killTimer = time.After(r.o.grace)
		case <-killTimer:
			var left []string
			for _, rp := range procs {
				if !rp.exited {
					left = append(left, strconv.Itoa(rp.p.rank))
				}
			}
			noun := "ranks"
			if len(left) == 1 {
				noun = "rank"
			}
			r.out.info("%s %s did not exit within %v: sending SIGKILL", noun, strings.Join(left, ","), r.o.grace)
			stop(syscall.SIGKILL)
		case <-tick:
		}
		r.showStatus(njoined, running, n, restarts, stopping)
	}
	// Whatever the ranks left behind in their process groups goes too.
	stop(syscall.SIGKILL)
	waitGroupsGone(procs, drainTimeout)
	r.drain(procs, &readers)
	r.out.setStatus("")
	if stopping {
		r.out.info("%s", accountOfRanks(r.ps, procs))
	}
	if !stopping {
		res.ok = true
		if !r.o.quiet {
			r.out.info("%s exited 0 (%s)", plural(n, "rank"), time.Since(r.start).Round(time.Millisecond))
		}
	}
	return res
}

// accountOfRanks says how every rank of a failed or stopped attempt ended,
// ranks that ended alike together: "every rank: rank 2 exited with code 1
// (the first failure); ranks 0-1,3 were killed by signal SIGTERM (ringrun
// stopped them)". A rank that was never started says so.
func accountOfRanks(ps []placement, procs []*rankProc) string {
	fates := make([]fate, len(ps))
	for i := range fates {
		fates[i] = fate{how: "was never started"}
	}
	for _, rp := range procs {
		fates[rp.p.rank] = rp.fate
	}
	var groups []fate
	ranks := map[fate][]int{}
	for r, f := range fates {
		if _, seen := ranks[f]; !seen {
			groups = append(groups, f)
		}
		ranks[f] = append(ranks[f], r)
	}
	parts := make([]string, len(groups))
	for i, f := range groups {
		rs := ranks[f]
		who, how, them := "rank "+rankList(rs), f.how, "it"
		if len(rs) > 1 {
			who, them = "ranks "+rankList(rs), "them"
			how = strings.Replace(how, "was ", "were ", 1)
		}
		switch {
		case f.first:
			how += " (the first failure)"
		case f.stopped:
			how += " (ringrun stopped " + them + ")"
		}
		parts[i] = who + " " + how
	}
	return "every rank: " + strings.Join(parts, "; ")
}

// rankList writes ranks in ascending order as ranges: "0-2,5".
func rankList(ranks []int) string {
	var b strings.Builder
	for i := 0; i < len(ranks); {
		j := i
		for j+1 < len(ranks) && ranks[j+1] == ranks[j]+1 {
			j++
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(ranks[i]))
		if j > i {
			b.WriteString("-" + strconv.Itoa(ranks[j]))
		}
		i = j + 1
	}
	return b.String()
}

// rendezvousServer is the rendezvous ringrun serves for one attempt.
type rendezvousServer struct {
	joined chan int      // every rank that registers, once
	failed chan error    // Serve's error, unless it succeeded or was stopped
	cancel func()        // stops Serve
	ended  chan struct{} // closed when Serve has returned and ln is closed
}

// serveRendezvous serves j's rendezvous on ln until every rank has joined
// (and got the table of addresses) or stop is called; then it closes ln.
func (r *runner) serveRendezvous(ln net.Listener, j jobEnv) *rendezvousServer {
	ctx, cancel := context.WithCancel(context.Background())
	rv := &rendezvousServer{
		joined: make(chan int, j.size), // a rank registers at most once: never blocks
		failed: make(chan error, 1),
		cancel: cancel,
		ended:  make(chan struct{}),
	}
	id := transport.Identity{Token: []byte(j.token), Job: j.jobID, Size: j.size}
	opts := rendezvous.ServeOptions{
		// Refused connections (strangers, a wrong token) are worth a line.
		Log: slog.New(slog.NewTextHandler(infoWriter{r.out}, &slog.HandlerOptions{
			Level: slog.LevelWarn,
			ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
				if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
					return slog.Attr{}
				}
				return a
			},
		})),
		OnRegister: func(rank int, _ string) { rv.joined <- rank },
	}
	go func() {
		defer close(rv.ended)
		err := rendezvous.ServeWith(ctx, ln, id, opts)
		_ = ln.Close()
		if err != nil && ctx.Err() == nil {
			rv.failed <- err
		}
	}()
	return rv
}

// stop stops serving, if Serve is still running, and waits until it has
// returned.
func (rv *rendezvousServer) stop() {
	rv.cancel()
	<-rv.ended
}

// infoWriter writes each Write, one record of a slog.TextHandler without
// time and level, as one of ringrun's lines: msg="text" k=v becomes text k=v.
type infoWriter struct{ out *output }

func (w infoWriter) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	if rest, ok := strings.CutPrefix(line, slog.MessageKey+"="); ok {
		msg, tail, _ := strings.Cut(rest, " ")
		if q, err := strconv.QuotedPrefix(rest); err == nil {
			msg, _ = strconv.Unquote(q)
			tail = strings.TrimPrefix(rest[len(q):], " ")
		}
		line = strings.TrimSuffix(msg+" "+tail, " ")
	}
	w.out.info("%s", line)
	return len(p), nil
}

// startRank starts rank p with its output read into r.out.
func (r *runner) startRank(j jobEnv, p placement, exits chan<- exitEvent, readers *sync.WaitGroup) (*rankProc, error) {
	cmd, token := rankCommand(r.o, j, p, r.workDir)
	rp := &rankProc{p: p, cmd: cmd}
	var childEnds []*os.File
	defer func() {
		for _, f := range childEnds {
			_ = f.Close()
		}
	}()
	for s := range 2 {
		pr, pw, err := os.Pipe()
		if err != nil {
			rp.closePipes()
			return nil, err
		}
		rp.pipes[s] = pr
		childEnds = append(childEnds, pw)
	}
	cmd.Stdout, cmd.Stderr = childEnds[0], childEnds[1]
	if token {
		pr, pw, err := os.Pipe()
		if err != nil {
			rp.closePipes()
			return nil, err
		}
		childEnds = append(childEnds, pr)
		cmd.Stdin, rp.stdin = pr, pw
	}
	if err := cmd.Start(); err != nil {
		rp.closePipes()
		return nil, err
	}
	if token {
		// 65 bytes into an empty pipe: never blocks. An agent that died
		// already makes this fail, and its exit is reported.
		_, _ = io.WriteString(rp.stdin, j.token+"\n")
	}
	prefix := rankPrefix(p.rank)
	for s, w := range []io.Writer{r.out.stdout, r.out.stderr} {
		var file io.Writer
		if r.files != nil {
			file = r.files[p.rank][s]
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			r.out.copyLines(rp.pipes[s], w, prefix, file)
		}()
	}
	idx := p.rank
	go func() {
		_ = cmd.Wait() // the state says how it ended
		exits <- exitEvent{idx: idx, state: cmd.ProcessState}
	}()
	return rp, nil
}

func (rp *rankProc) closePipes() {
	for _, f := range rp.pipes {
		if f != nil {
			_ = f.Close()
		}
	}
	if rp.stdin != nil {
		_ = rp.stdin.Close()
	}
}

// drain waits for the ranks' output to end, at most drainTimeout once all
// ranks have exited, then closes the pipes.
func (r *runner) drain(procs []*rankProc, readers *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		readers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(drainTimeout):
		r.out.info("a rank's children still hold its output open: no longer reading it")
	}
	for _, rp := range procs {
		rp.closePipes()
	}
	<-done
}

func (r *runner) showStatus(joined, running, n, restarts int, stopping bool) {
	if !r.out.tty {
		return
	}
	r.out.setStatus(r.statusLine(joined, running, n, restarts, stopping, time.Since(r.start)))
}

// statusLine is the live status: while the ranks are joining the
// rendezvous, how many have, then how many are running.
func (r *runner) statusLine(joined, running, n, restarts int, stopping bool, elapsed time.Duration) string {
	s := "ringrun: "
	if n > 1 && joined < n { // a job of one rank needs no rendezvous
		s += fmt.Sprintf("%d/%d ranks joined · %d/%d running", joined, n, running, n)
	} else {
		s += fmt.Sprintf("%d/%d ranks running", running, n)
	}
	s += " · " + formatElapsed(elapsed)
	if r.o.maxRestarts > 0 {
		s += fmt.Sprintf(" · restart %d/%d", restarts, r.o.maxRestarts)
	}
	if stopping {
		s += " · stopping"
	}
	return s
}

func formatElapsed(d time.Duration) string {
	s := int(d.Seconds())
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

func (r *runner) hostSummary() string {
	hosts := map[string]bool{}
	for _, p := range r.ps {
		hosts[p.host] = true
	}
	if len(hosts) == 1 && hosts[""] {
		return ""
	}
	return " on " + plural(len(hosts), "host")
}

// plural is "1 rank", "3 ranks".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func onHost(p placement) string {
	if p.host == "" {
		return ""
	}
	return " on " + p.host
}

// waitGroupsGone waits, at most timeout, until the process groups of procs
// are empty: every process in them has exited and been reaped. Every rank
// has been reaped already, so what ringrun reaps here are the processes the
// ranks left behind, which became ringrun's children (it is their
// subreaper, see main) when their parents died.
func waitGroupsGone(procs []*rankProc, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for _, rp := range procs {
		pgid := rp.cmd.Process.Pid
		for {
			for {
				var ws syscall.WaitStatus
				if pid, err := syscall.Wait4(-pgid, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
					break
				}
			}
			if syscall.Kill(-pgid, 0) != nil || time.Now().After(deadline) {
				break
			}
			<-t.C
		}
	}
}

// describeExit says how a process ended, and the exit code ringrun takes
// from it: its own, or 128+signal.
func describeExit(st *os.ProcessState, agent bool) (string, int) {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok {
		return st.String(), 1
	}
	if code := ws.ExitStatus(); agent && code > 128 && code < 160 {
		// The remote wrapper (and ssh) report a signal as 128+N.
		return fmt.Sprintf("was killed by signal %s (exit code %d through the agent)", signalName(syscall.Signal(code-128)), code), code
	}
	if ws.Signaled() {
		how := "was killed by signal " + signalName(ws.Signal())
		if ws.CoreDump() {
			how += " (core dumped)"
		}
		return how, 128 + int(ws.Signal())
	}
	return fmt.Sprintf("exited with code %d", ws.ExitStatus()), ws.ExitStatus()
}

// stoppedBy tells whether st is the death ringrun asked for (sig or SIGKILL).
func stoppedBy(st *os.ProcessState, sig syscall.Signal) bool {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok {
		return false
	}
	if ws.Signaled() {
		return ws.Signal() == sig || ws.Signal() == syscall.SIGKILL
	}
	// A shell (the remote wrapper, ssh) reports a signal as 128+N.
	code := ws.ExitStatus()
	return code == 128+int(sig) || code == 128+int(syscall.SIGKILL)
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGABRT: "SIGABRT", syscall.SIGALRM: "SIGALRM", syscall.SIGBUS: "SIGBUS",
	syscall.SIGFPE: "SIGFPE", syscall.SIGHUP: "SIGHUP", syscall.SIGILL: "SIGILL",
	syscall.SIGINT: "SIGINT", syscall.SIGKILL: "SIGKILL", syscall.SIGPIPE: "SIGPIPE",
	syscall.SIGQUIT: "SIGQUIT", syscall.SIGSEGV: "SIGSEGV", syscall.SIGTERM: "SIGTERM",
	syscall.SIGTRAP: "SIGTRAP", syscall.SIGUSR1: "SIGUSR1", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ", syscall.SIGSYS: "SIGSYS",
}

func signalName(s os.Signal) string {
	if sig, ok := s.(syscall.Signal); ok {
		if name, ok := signalNames[sig]; ok {
			return name
		}
		return fmt.Sprintf("signal %d (%v)", int(sig), sig)
	}
	return s.String()
}

func signum(s os.Signal) int {
	if sig, ok := s.(syscall.Signal); ok {
		return int(sig)
	}
	return 1
}

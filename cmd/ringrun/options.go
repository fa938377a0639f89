//go:build unix

package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// options is a parsed ringrun command line.
type options struct {
	np          int
	hosts       []hostSlots // empty: every rank on this machine
	agent       []string    // command that runs a command on a host: AGENT HOST COMMAND...
	agentQuote  bool        // pass the remote command as one shell-quoted string (ssh)
	env         []envVar    // -x
	iface       string
	addr        string // host ranks dial for the rendezvous ("" = chosen)
	port        int    // rendezvous port (0 = a free one)
	transport   string
	tls         bool
	timeout     string // RINGO_TIMEOUT, passed through as given
	outputDir   string
	maxRestarts int
	grace       time.Duration
	quiet       bool
	program     []string
}

// hostSlots is one host and how many ranks it runs.
type hostSlots struct {
	name  string
	slots int
}

// envVar is one -x: NAME=VALUE, or NAME alone to forward ringrun's own value.
type envVar struct {
	name, value string
	forward     bool
}

type envFlag struct{ vars *[]envVar }

func (f envFlag) String() string { return "" }

func (f envFlag) Set(s string) error {
	name, value, hasValue := strings.Cut(s, "=")
	if !validEnvName(name) {
		return fmt.Errorf("%q is not NAME or NAME=VALUE", s)
	}
	*f.vars = append(*f.vars, envVar{name: name, value: value, forward: !hasValue})
	return nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

const usageText = `ringrun starts the ranks of a ringo job and waits for them.

usage: ringrun [flags] [--] PROGRAM [ARGS...]

  ringrun -np 4 ./train                                      4 ranks on this machine
  ringrun --hosts node1:4,node2:4 --addr 10.0.0.1 -- ./train 8 ranks over ssh
  ip netns exec ringo-h0 ringrun --hosts ringo-h0:1,ringo-h1:1 --agent "ip netns exec" --addr 10.77.0.1 -- ./train

ringrun serves the job's rendezvous itself, on this machine at --addr (the
address ranks dial) and --port. Every rank gets RINGO_RANK,
RINGO_WORLD_SIZE, RINGO_LOCAL_RANK, RINGO_LOCAL_WORLD_SIZE, RINGO_ADDR (the
rendezvous), RINGO_RENDEZVOUS_EXTERNAL=1 (no rank serves it), RINGO_TOKEN
(fresh for every run, never on a command line), RINGO_JOB_ID and
RINGO_RESTART_COUNT. Ranks on this machine also get GOMAXPROCS =
max(1, CPUs / ranks here) unless you set it, so that ranks sharing cores do
not starve each other with spinning runtime threads. Ranks on other hosts are started as
AGENT HOST env VARS... sh -c WRAPPER PROGRAM ARGS...; the wrapper reads the
token from its standard input (so the agent must forward it: ssh does, use
"docker exec -i") and stops the program when that input closes.

Output lines are prefixed with the rank ("[2] ..."), stdout and stderr kept
apart. When a rank fails, ringrun names it, stops the others (SIGTERM, then
SIGKILL after --grace) and exits with that rank's exit code (128+signal for a
signal). SIGINT or SIGTERM to ringrun stops every rank.

flags:
`

// parseArgs reads ringrun's command line. environ is consulted for -x NAME.
func parseArgs(args []string, usageOut io.Writer) (*options, error) {
	o := &options{grace: 5 * time.Second}
	fs := flag.NewFlagSet("ringrun", flag.ContinueOnError)
	fs.SetOutput(usageOut)
	fs.Usage = func() {
		fmt.Fprint(usageOut, usageText)
		fs.PrintDefaults()
	}
	var hosts, hostfile, agent, agentQuote string
	fs.IntVar(&o.np, "np", 0, "number of ranks (default: the hosts' slots, or 1)")
	fs.IntVar(&o.np, "n", 0, "same as -np")
	fs.StringVar(&hosts, "hosts", "", "hosts and their slots, `h1:4,h2:4` (a host without :N has 1 slot)")
	fs.StringVar(&hostfile, "hostfile", "", "`file` of lines \"host slots=N\" (# starts a comment)")
	fs.StringVar(&agent, "agent", "ssh", "`command` that runs a command on a host: AGENT HOST COMMAND...")
	fs.StringVar(&agentQuote, "agent-quote", "auto", "pass the remote command as one shell-quoted string: yes, no, or auto (yes for ssh and rsh)")
	fs.Var(envFlag{&o.env}, "x", "set `NAME=VALUE` in every rank, or forward NAME from ringrun's environment (repeatable)")
	fs.StringVar(&o.iface, "iface", "", "network `interface` whose address ranks advertise (RINGO_IFACE)")
	fs.StringVar(&o.addr, "addr", "", "`host` ranks dial for the rendezvous ringrun serves: an address of this machine (default 127.0.0.1 when every rank runs here, else --iface's address, else this machine's name)")
	fs.IntVar(&o.port, "port", 0, "`port` ringrun serves the rendezvous on (default: any free port)")
	fs.StringVar(&o.transport, "transport", "", "transport between ranks: auto (the default: shared memory within a host, tcp between hosts), tcp, quic or shm (RINGO_TRANSPORT)")
	fs.BoolVar(&o.tls, "tls", false, "TLS 1.3 on TCP links (RINGO_TLS=1; QUIC always has it)")
	fs.StringVar(&o.timeout, "timeout", "", "`duration` bounding each collective call and forming the communicator (RINGO_TIMEOUT)")
	fs.StringVar(&o.outputDir, "output-dir", "", "also write each rank's output to `dir`/rank.N.stdout and rank.N.stderr")
	fs.IntVar(&o.maxRestarts, "max-restarts", 0, "restart the whole job up to `K` times after a failure (RINGO_RESTART_COUNT counts them)")
	fs.DurationVar(&o.grace, "grace", o.grace, "time ranks get to exit after SIGTERM before SIGKILL")
	fs.BoolVar(&o.quiet, "q", false, "print only failures, not ringrun's progress lines")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	o.program = fs.Args()
	if len(o.program) == 0 {
		return nil, errors.New("no program given: ringrun [flags] -- PROGRAM [ARGS...]")
	}
	npGiven := false
	fs.Visit(func(f *flag.Flag) { npGiven = npGiven || f.Name == "np" || f.Name == "n" })
	if o.np < 0 || npGiven && o.np == 0 {
		return nil, fmt.Errorf("-np %d: want at least 1 rank", o.np)
	}
	if o.maxRestarts < 0 {
		return nil, fmt.Errorf("--max-restarts %d: want 0 or more", o.maxRestarts)
	}
	if o.grace < 0 {
		return nil, fmt.Errorf("--grace %v: want 0 or more", o.grace)
	}
	if o.port < 0 || o.port > 65535 {
		return nil, fmt.Errorf("--port %d is not a TCP port", o.port)
	}
	switch t := strings.ToLower(o.transport); t {
	case "", "auto", "tcp", "quic", "shm":
		o.transport = t
	default:
		return nil, fmt.Errorf("--transport %q: want auto, tcp, quic or shm", o.transport)
	}
	if o.timeout != "" {
		if _, err := time.ParseDuration(o.timeout); err != nil {
			if _, ferr := strconv.ParseFloat(o.timeout, 64); ferr != nil {
				return nil, fmt.Errorf("--timeout %q is neither a duration (90s) nor seconds", o.timeout)
			}
		}
	}
	o.agent = strings.Fields(agent)
	if len(o.agent) == 0 {
		return nil, errors.New("--agent is empty")
	}
	switch agentQuote {
	case "yes", "true":
		o.agentQuote = true
	case "no", "false":
	case "auto":
		switch base := o.agent[0][strings.LastIndexByte(o.agent[0], '/')+1:]; base {
		case "ssh", "rsh", "oarsh":
			o.agentQuote = true
		}
	default:
		return nil, fmt.Errorf("--agent-quote %q: want yes, no or auto", agentQuote)
	}

	if hosts != "" && hostfile != "" {
		return nil, errors.New("give --hosts or --hostfile, not both")
	}
	var err error
	switch {
	case hosts != "":
		o.hosts, err = parseHosts(hosts)
	case hostfile != "":
		o.hosts, err = readHostfile(hostfile)
	}
	if err != nil {
		return nil, err
	}
	total := 0
	for _, h := range o.hosts {
		total += h.slots
	}
	switch {
	case o.np == 0 && total > 0:
		o.np = total
	case o.np == 0:
		o.np = 1
	case len(o.hosts) > 0 && o.np > total:
		return nil, fmt.Errorf("-np %d needs %d slots; the hosts have %d", o.np, o.np, total)
	}
	return o, nil
}

// parseHosts reads "h1:4,h2:4,h3" (IPv6 addresses in brackets: "[::1]:2").
func parseHosts(s string) ([]hostSlots, error) {
	var hs []hostSlots
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, slots := item, 1
		if i := strings.LastIndexByte(item, ':'); i >= 0 && (!strings.Contains(item[:i], ":") || strings.HasSuffix(item[:i], "]")) {
			n, err := strconv.Atoi(item[i+1:])
			if err != nil || n < 1 {
				return nil, fmt.Errorf("--hosts: %q: slots must be a positive integer", item)
			}
			name, slots = item[:i], n
		}
		name = strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")
		if name == "" {
			return nil, fmt.Errorf("--hosts: %q has no host name", item)
		}
		hs = append(hs, hostSlots{name, slots})
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("--hosts %q names no host", s)
	}
	return hs, nil
}

// readHostfile reads mpirun/DeepSpeed hostfiles: "host slots=N" per line,
// "host" alone meaning one slot, "#" starting a comment. max_slots= is
// accepted and ignored.
func readHostfile(path string) ([]hostSlots, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--hostfile: %w", err)
	}
	defer f.Close()
	hs, err := parseHostfile(f)
	if err != nil {
		return nil, fmt.Errorf("--hostfile %s: %w", path, err)
	}
	return hs, nil
}

func parseHostfile(r io.Reader) ([]hostSlots, error) {
	var hs []hostSlots
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		h := hostSlots{name: fields[0], slots: 1}
		for _, f := range fields[1:] {
			k, v, ok := strings.Cut(f, "=")
			switch {
			case ok && (k == "slots" || k == "slot"):
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 {
					return nil, fmt.Errorf("line %d: %q: slots must be a positive integer", line, f)
				}
				h.slots = n
			case ok && k == "max_slots":
			default:
				return nil, fmt.Errorf("line %d: %q: want \"host slots=N\"", line, f)
			}
		}
		hs = append(hs, h)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(hs) == 0 {
		return nil, errors.New("names no host")
	}
	return hs, nil
}

// placement is where one rank runs.
type placement struct {
	rank, localRank, localSize int
	host                       string // "" on this machine, without an agent
}

// place fills the hosts in order, each up to its slots (mpirun's --map-by slot).
func place(np int, hosts []hostSlots) []placement {
	ps := make([]placement, 0, np)
	if len(hosts) == 0 {
		for r := range np {
			ps = append(ps, placement{rank: r, localRank: r, localSize: np})
		}
		return ps
	}
	for _, h := range hosts {
		start := len(ps)
		for l := 0; l < h.slots && len(ps) < np; l++ {
			ps = append(ps, placement{rank: len(ps), localRank: l, host: h.name})
		}
		for i := start; i < len(ps); i++ {
			ps[i].localSize = len(ps) - start
		}
	}
	// A host listed twice shares its local ranks.
	byHost := map[string][]int{}
	for i, p := range ps {
		byHost[p.host] = append(byHost[p.host], i)
	}
	for _, idx := range byHost {
		for l, i := range idx {
			ps[i].localRank, ps[i].localSize = l, len(idx)
		}
	}
	return ps
}

// isLocalHost tells whether name is this machine, where ranks are started
// directly rather than through the agent.
func isLocalHost(name string) bool {
	switch name {
	case "localhost", "127.0.0.1", "::1":
		return true
	}
	if h, err := os.Hostname(); err == nil {
		if name == h || strings.SplitN(h, ".", 2)[0] == name && !strings.Contains(name, ".") {
			return true
		}
	}
	return false
}

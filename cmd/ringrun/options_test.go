//go:build unix

package main

import (
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseArgs(t *testing.T) {
	o, err := parseArgs([]string{"-np", "3", "-x", "A=1", "-x", "B", "--grace=2s", "--timeout", "90s", "--", "prog", "-np", "9"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 3, o.np)
	assert.Equal(t, []envVar{{name: "A", value: "1"}, {name: "B", forward: true}}, o.env)
	assert.Equal(t, 2*time.Second, o.grace)
	assert.Equal(t, "90s", o.timeout)
	assert.Equal(t, []string{"prog", "-np", "9"}, o.program, "the program's own flags are its own")
	assert.Equal(t, []string{"ssh"}, o.agent)
	assert.True(t, o.agentQuote, "ssh gets one quoted string")

	// Without "--", flags end at the program.
	o, err = parseArgs([]string{"-n", "2", "prog", "--hosts", "x"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 2, o.np)
	assert.Empty(t, o.hosts)
	assert.Equal(t, []string{"prog", "--hosts", "x"}, o.program)

	o, err = parseArgs([]string{"--hosts", "a:2,b", "--agent", "ip netns exec", "prog"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 3, o.np, "-np defaults to the slots")
	assert.Equal(t, []string{"ip", "netns", "exec"}, o.agent)
	assert.False(t, o.agentQuote)

	o, err = parseArgs([]string{"prog"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 1, o.np)

	o, err = parseArgs([]string{"--transport", "QUIC", "prog"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "quic", o.transport, "names are case-insensitive")

	for _, bad := range [][]string{
		{},
		{"-np", "2"},
		{"-np", "-1", "p"},
		{"-np", "0", "p"},
		{"-n", "0", "p"},
		{"--hosts", "a:x", "p"},
		{"--hosts", "a:2", "--hostfile", "f", "p"},
		{"-np", "3", "--hosts", "a:2", "p"},
		{"-x", "=1", "p"},
		{"--agent", " ", "p"},
		{"--agent-quote", "maybe", "p"},
		{"--timeout", "soon", "p"},
		{"--transport", "carrier-pigeon", "p"},
		{"--port", "70000", "p"},
		{"--max-restarts", "-1", "p"},
	} {
		_, err := parseArgs(bad, io.Discard)
		assert.Error(t, err, "%q", bad)
	}
}

func TestParseHosts(t *testing.T) {
	hs, err := parseHosts("h1:4, h2 ,[::1]:2,10.0.0.1:3,")
	require.NoError(t, err)
	assert.Equal(t, []hostSlots{{"h1", 4}, {"h2", 1}, {"::1", 2}, {"10.0.0.1", 3}}, hs)
	for _, bad := range []string{"", ",", "h:0", "h:-1", ":3", "h:x"} {
		_, err := parseHosts(bad)
		assert.Error(t, err, "%q", bad)
	}
}

func TestParseHostfile(t *testing.T) {
	hs, err := parseHostfile(strings.NewReader(`
# a comment
node1 slots=4
node2 slots=2 max_slots=8   # trailing comment
node3
`))
	require.NoError(t, err)
	assert.Equal(t, []hostSlots{{"node1", 4}, {"node2", 2}, {"node3", 1}}, hs)
	for _, bad := range []string{"", "# only\n", "n slots=0\n", "n slots=x\n", "n cpus=4\n"} {
		_, err := parseHostfile(strings.NewReader(bad))
		assert.Error(t, err, "%q", bad)
	}
}

func TestPlace(t *testing.T) {
	ps := place(5, []hostSlots{{"a", 2}, {"b", 2}, {"c", 4}})
	assert.Equal(t, []placement{
		{rank: 0, localRank: 0, localSize: 2, host: "a"},
		{rank: 1, localRank: 1, localSize: 2, host: "a"},
		{rank: 2, localRank: 0, localSize: 2, host: "b"},
		{rank: 3, localRank: 1, localSize: 2, host: "b"},
		{rank: 4, localRank: 0, localSize: 1, host: "c"},
	}, ps)
	ps = place(3, nil)
	assert.Equal(t, []placement{{0, 0, 3, ""}, {1, 1, 3, ""}, {2, 2, 3, ""}}, ps)
	// A host listed twice numbers its local ranks across both entries.
	ps = place(3, []hostSlots{{"a", 1}, {"b", 1}, {"a", 1}})
	assert.Equal(t, []placement{{0, 0, 2, "a"}, {1, 0, 1, "b"}, {2, 1, 2, "a"}}, ps)
}

func TestShellQuote(t *testing.T) {
	words := []string{"plain", "", "two words", `it's`, `"dq"`, `$HOME`, "`id`", "a\nb", `\`, "*", "x=1,y:2"}
	out, err := exec.Command("sh", "-c", "printf '<%s>' "+shellJoin(words)).Output()
	require.NoError(t, err)
	var want strings.Builder
	for _, w := range words {
		want.WriteString("<" + w + ">")
	}
	assert.Equal(t, want.String(), string(out))
	assert.Equal(t, "RINGO_RANK=3", shellQuote("RINGO_RANK=3"), "plain words stay readable")
}

func TestRankEnv(t *testing.T) {
	o := &options{transport: "tcp", iface: "eth1", timeout: "30s"}
	j := jobEnv{size: 8, addr: "10.0.0.1:29500", token: "secret", jobID: "job-1", restarts: 2}
	env := rankEnv(o, j, placement{rank: 5, localRank: 1, localSize: 4, host: "b"})
	assert.Equal(t, []string{
		"RINGO_RANK=5", "RINGO_WORLD_SIZE=8", "RINGO_LOCAL_RANK=1", "RINGO_LOCAL_WORLD_SIZE=4",
		"RINGO_ADDR=10.0.0.1:29500", "RINGO_RENDEZVOUS_EXTERNAL=1", "RINGO_JOB_ID=job-1", "RINGO_RESTART_COUNT=2",
		"RINGO_TRANSPORT=tcp", "RINGO_IFACE=eth1", "RINGO_TIMEOUT=30s",
	}, env)
	for _, kv := range env {
		assert.NotContains(t, kv, "secret", "the token is passed apart")
	}

	// A remote rank's command line holds no token.
	o = &options{agent: []string{"ssh", "-p", "22"}, agentQuote: true, grace: 2500 * time.Millisecond, program: []string{"./train", "--lr", "0.1"}}
	cmd, viaStdin := rankCommand(o, j, placement{rank: 1, host: "node9"}, "/work dir")
	assert.True(t, viaStdin)
	assert.Equal(t, []string{"ssh", "-p", "22", "node9"}, cmd.Args[:4])
	require.Len(t, cmd.Args, 5)
	assert.NotContains(t, cmd.Args[4], "secret")
	assert.Contains(t, cmd.Args[4], " ringrun-rank '/work dir' 3 ./train --lr 0.1")
	for _, kv := range cmd.Env {
		assert.False(t, strings.HasPrefix(kv, "RINGO_TOKEN="))
	}

	// A local rank gets it in its environment.
	o = &options{program: []string{"./train"}}
	cmd, viaStdin = rankCommand(o, j, placement{rank: 0}, "/")
	assert.False(t, viaStdin)
	assert.Contains(t, cmd.Env, "RINGO_TOKEN=secret")
	assert.Equal(t, []string{"./train"}, cmd.Args)
	assert.True(t, cmd.SysProcAttr.Setpgid)
}

func TestRendezvousHost(t *testing.T) {
	h, err := rendezvousHost(&options{}, place(2, nil))
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", h)
	h, err = rendezvousHost(&options{}, place(2, []hostSlots{{"node7", 1}, {"node8", 1}}))
	require.NoError(t, err)
	name, err := os.Hostname()
	require.NoError(t, err)
	assert.Equal(t, name, h, "ringrun's host, which serves the rendezvous")
	h, err = rendezvousHost(&options{addr: "10.1.2.3"}, place(2, []hostSlots{{"node7", 2}}))
	require.NoError(t, err)
	assert.Equal(t, "10.1.2.3", h)
	h, err = rendezvousHost(&options{iface: "lo"}, place(2, nil))
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", h)
	_, err = rendezvousHost(&options{iface: "no-such-if0"}, place(2, []hostSlots{{"node7", 2}}))
	assert.ErrorContains(t, err, "--addr")
}

func TestListenRendezvous(t *testing.T) {
	// Port 0: any free port, and the ranks are told which.
	ln, addr, err := listenRendezvous(&options{}, place(2, nil))
	require.NoError(t, err)
	defer ln.Close()
	assert.Equal(t, ln.Addr().String(), addr)
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", host)
	assert.NotEqual(t, "0", port)

	// --port: that port, again and again (one listener per attempt).
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	require.NoError(t, ln.Close())
	for range 2 {
		ln, addr, err = listenRendezvous(&options{port: p, addr: "127.0.0.1"}, place(2, nil))
		require.NoError(t, err)
		assert.Equal(t, net.JoinHostPort("127.0.0.1", port), addr)
		require.NoError(t, ln.Close())
	}

	// A host name is advertised as it is; ringrun listens on every interface.
	ln, addr, err = listenRendezvous(&options{addr: "localhost"}, place(2, nil))
	require.NoError(t, err)
	defer ln.Close()
	assert.Regexp(t, `^localhost:\d+$`, addr)
	assert.True(t, ln.Addr().(*net.TCPAddr).IP.IsUnspecified(), "listening on %v", ln.Addr())

	// --addr must be this machine's: ringrun cannot serve elsewhere.
	_, _, err = listenRendezvous(&options{addr: "192.0.2.1"}, place(2, nil)) // TEST-NET-1: nobody's
	assert.ErrorContains(t, err, "--addr must be an address of this machine")
}

func TestStatusText(t *testing.T) {
	r := &runner{o: &options{}}
	assert.Equal(t, "ringrun: 0/4 ranks joined · 4/4 running · 0:00", r.statusLine(0, 4, 4, 0, false, 0))
	assert.Equal(t, "ringrun: 3/4 ranks joined · 4/4 running · 0:07", r.statusLine(3, 4, 4, 0, false, 7*time.Second))
	assert.Equal(t, "ringrun: 4/4 ranks running · 1:05", r.statusLine(4, 4, 4, 0, false, 65*time.Second))
	assert.Equal(t, "ringrun: 3/4 ranks running · 1:00:00 · stopping", r.statusLine(4, 3, 4, 0, true, time.Hour))
	assert.Equal(t, "ringrun: 1/1 ranks running · 0:02", r.statusLine(0, 1, 1, 0, false, 2*time.Second), "one rank needs no rendezvous")
	r.o.maxRestarts = 2
	assert.Equal(t, "ringrun: 1/3 ranks joined · 2/3 running · 0:01 · restart 1/2 · stopping", r.statusLine(1, 2, 3, 1, true, time.Second))
}

func TestThreadsEnvSharesTheCPUs(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	require.NoError(t, os.Unsetenv("GOMAXPROCS"))
	o := &options{}
	assert.Equal(t, []string{"GOMAXPROCS=1"}, threadsEnv(o, placement{localSize: 4}, 2))
	assert.Equal(t, []string{"GOMAXPROCS=4"}, threadsEnv(o, placement{localSize: 2}, 8))
	assert.Equal(t, []string{"GOMAXPROCS=3"}, threadsEnv(o, placement{localSize: 1}, 3))
	o.env = []envVar{{name: "GOMAXPROCS", value: "2"}}
	assert.Nil(t, threadsEnv(o, placement{localSize: 4}, 2), "-x GOMAXPROCS wins")
	t.Setenv("GOMAXPROCS", "2")
	assert.Nil(t, threadsEnv(&options{}, placement{localSize: 4}, 2), "the user's GOMAXPROCS wins")
}

func TestRankEnvTLS(t *testing.T) {
	env := rankEnv(&options{transport: "quic", tls: true}, jobEnv{size: 2}, placement{rank: 1})
	assert.Contains(t, env, "RINGO_TRANSPORT=quic")
	assert.Contains(t, env, "RINGO_TLS=1")
	assert.NotContains(t, rankEnv(&options{}, jobEnv{size: 2}, placement{}), "RINGO_TLS=1")
}

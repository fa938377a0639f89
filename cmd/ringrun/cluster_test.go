//go:build unix

package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The same program runs unchanged under OpenMPI's mpirun: collective.Init
// reads OMPI_COMM_WORLD_RANK/SIZE and the rendezvous from RINGO_ADDR.
func TestUnderMpirun(t *testing.T) {
	t.Parallel()
	mpirun := openMPI(t)
	p := start(t, mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "4",
		"-x", "RINGO_ADDR="+freeLoopbackAddr(t), "-x", "RINGO_TIMEOUT=30s", ringcheckBn, "-sizes", "1,7,1000")
	require.Equal(t, 0, p.wait(60*time.Second), "stdout:\n%s\nstderr:\n%s", p.out(), p.err())
	for r := range 4 {
		assert.Contains(t, p.out(), fmt.Sprintf("rank %d of 4 ok\n", r))
	}
}

// Two mpirun jobs started at once with the same RINGO_ADDR (the issue's
// case, where each took the other's ranks and both failed) both succeed:
// OpenMPI gives each its job id, the rendezvous of one refuses the other's
// ranks, and the second job forms once the first has.
func TestTwoMpirunJobsOnOnePort(t *testing.T) {
	t.Parallel()
	mpirun := openMPI(t)
	addr := freeLoopbackAddr(t)
	var jobs []*proc
	for range 2 {
		jobs = append(jobs, start(t, mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "3",
			"-x", "RINGO_ADDR="+addr, "-x", "RINGO_TIMEOUT=60s", ringcheckBn, "-sizes", "1,1000"))
	}
	for i, p := range jobs {
		require.Equal(t, 0, p.wait(90*time.Second), "job %d\nstdout:\n%s\nstderr:\n%s", i, p.out(), p.err())
		for r := range 3 {
			assert.Contains(t, p.out(), fmt.Sprintf("rank %d of 3 ok\n", r), "job %d", i)
		}
	}
}

// The same program runs unchanged under torchrun (python3 -m
// torch.distributed.run --no_python), the command the README gives:
// collective.Init reads RANK/WORLD_SIZE and MASTER_ADDR, and the port after
// MASTER_PORT (the agent's store has that one). -r 9:1 -t 9:1 (a redirect
// for a local rank that does not exist) works around the crash of Debian's
// torch 1.13 launcher when no redirect is given.
func TestUnderTorchrun(t *testing.T) {
	t.Parallel()
	python := pythonWithTorch(t)
	addr := freeLoopbackAddr(t)
	host, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	if ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port+1))); err != nil {
		t.Skipf("port %d (ringo's, after torchrun's %d) is taken: %v", port+1, port, err)
	} else {
		require.NoError(t, ln.Close())
	}
	p := startEnv(t, []string{"RINGO_TIMEOUT=60s", "OMP_NUM_THREADS=1"}, python, "-m", "torch.distributed.run", "--no_python",
		"-r", "9:1", "-t", "9:1", "--nproc_per_node", "4", "--master_addr", host, "--master_port", portText,
		ringcheckBn, "-sizes", "1,7,1000")
	require.Equal(t, 0, p.wait(120*time.Second), "stdout:\n%s\nstderr:\n%s", p.out(), p.err())
	for r := range 4 {
		assert.Contains(t, p.out(), fmt.Sprintf("rank %d of 4 ok\n", r))
	}
}

// pythonWithTorch returns a Python that has torch.distributed.run
// (RINGO_TEST_PYTHON, python3 on PATH, or Debian's /usr/bin/python3, where
// apt-get install python3-torch puts it), or skips the test.
func pythonWithTorch(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("RINGO_TEST_PYTHON"), "python3", "/usr/bin/python3"}
	var tried []string
	for _, c := range candidates {
		if c == "" {
			continue
		}
		path, err := exec.LookPath(c)
		if err != nil {
			continue
		}
		tried = append(tried, path)
		if exec.Command(path, "-c", "import torch.distributed.run").Run() == nil {
			return path
		}
	}
	t.Skipf("no Python with torch (tried %s): apt-get install python3-torch, or set RINGO_TEST_PYTHON, to run this test", strings.Join(tried, ", "))
	return ""
}

// openMPI returns OpenMPI's mpirun, or skips the test.
func openMPI(t *testing.T) string {
	t.Helper()
	mpirun, err := exec.LookPath("mpirun")
	if err != nil {
		t.Skip("mpirun (OpenMPI) is not installed: apt-get install openmpi-bin to run this test")
	}
	if out, err := exec.Command(mpirun, "--version").CombinedOutput(); err != nil || !strings.Contains(string(out), "Open MPI") {
		t.Skipf("%s is not OpenMPI's mpirun: %s", mpirun, out)
	}
	return mpirun
}

// freeLoopbackAddr is 127.0.0.1 with a port nobody listens on.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	return "127.0.0.1:" + strconv.Itoa(port)
}

// netnsScript is bench/cluster/netns.sh, found from this package's directory.
func netnsScript(t *testing.T) string {
	wd, err := os.Getwd()
	require.NoError(t, err)
	path := filepath.Join(wd, "..", "..", "bench", "cluster", "netns.sh")
	_, err = os.Stat(path)
	require.NoError(t, err)
	return path
}

// testbed brings up n hosts of netns.sh under a prefix of its own (so that
// concurrent runs do not collide) and takes them down at the end of the
// test. It returns the prefix.
func testbed(t *testing.T, n int, upArgs ...string) (script, prefix string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the network-namespace testbed needs root")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the network-namespace testbed needs %s (iproute2)", tool)
		}
	}
	script = netnsScript(t)
	prefix = "rt" + randomHex(2) + "-"
	t.Cleanup(func() { netnsRun(t, script, prefix, "down") })
	netnsRun(t, script, prefix, append([]string{"up", strconv.Itoa(n)}, upArgs...)...)
	return script, prefix
}

func netnsRun(t *testing.T, script, prefix string, args ...string) string {
	t.Helper()
	cmd := exec.Command(script, args...)
	cmd.Env = append(testEnv(), "RINGO_NETNS_PREFIX="+prefix)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "netns.sh %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

// ringrunOnHost0 runs ringrun inside the testbed's host 0: ringrun serves
// the rendezvous, and the bridge has no address in the root namespace, so
// the hosts can reach ringrun only there (at 10.77.0.1). ip netns exec
// execs ringrun, so the process the test signals is ringrun itself.
func ringrunOnHost0(t *testing.T, prefix string, args ...string) *proc {
	t.Helper()
	return start(t, "ip", append([]string{"netns", "exec", prefix + "h0", ringrunBin}, args...)...)
}

func hostsFlag(prefix string, n int) string {
	hs := make([]string, n)
	for i := range hs {
		hs[i] = fmt.Sprintf("%sh%d:1", prefix, i)
	}
	return strings.Join(hs, ",")
}

// A 4-host AllReduce over veth links on a bridge, each host in its own
// network namespace, started through ringrun --agent "ip netns exec" (run
// on host 0, where it serves the rendezvous).
func TestNetnsCluster(t *testing.T) {
	t.Parallel()
	script, prefix := testbed(t, 4, "--rate", "1gbit")
	p := ringrunOnHost0(t, prefix, "--hosts", hostsFlag(prefix, 4), "--agent", "ip netns exec", "--addr", "10.77.0.1", "--timeout", "30s",
		"--", ringcheckBn)
	require.Equal(t, 0, p.wait(60*time.Second), "stdout:\n%s\nstderr:\n%s", p.out(), p.err())
	for r := range 4 {
		assert.Contains(t, p.out(), fmt.Sprintf("[%d] rank %d of 4 ok\n", r, r))
	}
	assert.Contains(t, p.err(), "started 4 ranks on 4 hosts")

	// Stopping a job in the namespaces leaves nothing there; the token
	// reached the ranks on no command line.
	p = ringrunOnHost0(t, prefix, "--hosts", hostsFlag(prefix, 4), "--agent", "ip netns exec", "--addr", "10.77.0.1", "--", ringcheckBn, "-hang")
	pids := p.pids(4, 30*time.Second)
	requireTokenHidden(t, pids)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 128+int(syscall.SIGTERM), p.wait(30*time.Second))
	requireGone(t, pids)

	// The script is idempotent, and reports what it made.
	netnsRun(t, script, prefix, "up", "4", "--rate", "500mbit")
	status := netnsRun(t, script, prefix, "status")
	for i := range 4 {
		assert.Regexp(t, fmt.Sprintf(`(?m)^%sh%d +10\.77\.0\.%d/24 +link up +rate 500Mbit`, prefix, i, i+1), status)
	}

	// With host 3's link cut, the job cannot form: the ranks time out,
	// ringrun reports the failure, the rank that never joined, and stops the rest.
	netnsRun(t, script, prefix, "cut", "3")
	assert.Regexp(t, fmt.Sprintf(`(?m)^%sh3 .* link CUT`, prefix), netnsRun(t, script, prefix, "status"))
	p = ringrunOnHost0(t, prefix, "--hosts", hostsFlag(prefix, 4), "--agent", "ip netns exec", "--addr", "10.77.0.1", "--timeout", "2s",
		"--", ringcheckBn, "-sizes", "1")
	assert.NotEqual(t, 0, p.wait(60*time.Second))
	assert.Regexp(t, `(?m)^\[\d\] rank \d of 4 FAILED: joining: `, p.err())
	assert.Regexp(t, `(?m)^ringrun: rank \d on `+prefix+`h\d \(pid \d+\) exited with code 1$`, p.err())
	assert.Contains(t, p.err(), "ringrun: rank 3 had not joined the rendezvous\n")

	// Restored, it works again.
	netnsRun(t, script, prefix, "restore", "3")
	p = ringrunOnHost0(t, prefix, "--hosts", hostsFlag(prefix, 4), "--agent", "ip netns exec", "--addr", "10.77.0.1", "--timeout", "30s",
		"--", ringcheckBn, "-sizes", "1,1000", "-iters", "1")
	require.Equal(t, 0, p.wait(60*time.Second), "stdout:\n%s\nstderr:\n%s", p.out(), p.err())

	// Shrinking removes the extra hosts; down twice is fine.
	netnsRun(t, script, prefix, "up", "2")
	status = netnsRun(t, script, prefix, "status")
	assert.Contains(t, status, prefix+"h1 ")
	assert.NotContains(t, status, prefix+"h2 ")
	netnsRun(t, script, prefix, "down")
	netnsRun(t, script, prefix, "down")
	assert.Contains(t, netnsRun(t, script, prefix, "status"), "no hosts with prefix "+prefix)
	out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	require.NoError(t, err)
	assert.NotContains(t, string(out), prefix, "down leaves no interface behind")
}

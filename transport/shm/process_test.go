package shm_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/shm"
)

const (
	childEnv = "RINGO_SHM_TEST_CHILD"
	addrEnv  = "RINGO_SHM_TEST_ADDR"
)

// runChild runs this test binary's body as rank 1 of a pair when it was
// started so (by TestKilledPeerIsSeenAtOnce), and reports whether it was.
func runChild() bool {
	if os.Getenv(childEnv) == "" {
		return false
	}
	if err := child(os.Getenv(addrEnv)); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

// child connects to rank 0 at addr, says "ready" and echoes what it reads
// until it is killed.
func child(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	id := transport.Identity{Token: []byte("t"), Job: "shm-test", Rank: 1, Size: 2}
	m, err := transport.ListenMesh(ctx, shm.ControlNetwork(), "", id, nil)
	if err != nil {
		return err
	}
	if err := m.Start([]transport.Endpoint{{Addr: addr}, m.Endpoint()}); err != nil {
		return err
	}
	c := shm.Over(1, m, shm.Options{})
	s, err := c.Connect(ctx, 1, 0)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	_, err = io.Copy(s, s)
	return err
}

// A peer killed with SIGKILL is seen at once: a read waiting on it returns
// (the kernel closed the killed process's control socket), and no segment
// is left in /dev/shm.
func TestKilledPeerIsSeenAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	before := segments(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	id := transport.Identity{Token: []byte("t"), Job: "shm-test", Rank: 0, Size: 2}
	m, err := transport.ListenMesh(ctx, shm.ControlNetwork(), "", id, nil)
	require.NoError(t, err)
	require.NoError(t, m.Start([]transport.Endpoint{m.Endpoint(), {}}))
	c := shm.Over(0, m, shm.Options{})
	defer c.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", addrEnv+"="+m.Endpoint().Addr)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	s, err := c.Connect(ctx, 1, 1)
	require.NoError(t, err, stderr.String())
	defer s.Close()
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err, stderr.String())
	require.Equal(t, "ready\n", line)
	_, err = s.Write([]byte("echo"))
	require.NoError(t, err)
	got := make([]byte, 4)
	_, err = io.ReadFull(s, got)
	require.NoError(t, err)
	require.Equal(t, "echo", string(got))

	read := make(chan error, 1)
	go func() {
		_, err := s.Read(got)
		read <- err
	}()
	killed := time.Now()
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	select {
	case err := <-read:
		require.ErrorIs(t, err, io.EOF)
		t.Logf("the kill was seen after %v", time.Since(killed))
		assert.Less(t, time.Since(killed), 2*time.Second)
	case <-time.After(testTimeout):
		t.Fatal("the read did not see the peer die")
	}
	_, err = s.Write([]byte("x"))
	require.Error(t, err)
	assert.Equal(t, before, segments(t))
	assert.Empty(t, segments(t, cmd.Process.Pid), "the killed process's")
}

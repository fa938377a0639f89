package shm_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/shm"
)

// addrEnv tells the "echo" child (testjob.Start) where rank 0's control
// mesh listens.
const addrEnv = "RINGO_SHM_TEST_ADDR"

// childRoles are what this test binary does when a test starts it again.
var childRoles = map[string]func() int{"echo": echoChild}

// echoChild runs child as rank 1 of a pair.
func echoChild() int {
	if err := child(os.Getenv(addrEnv)); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
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

	echo := testjob.Start(t, testjob.Config{Ranks: 1, Role: "echo",
		Env: func(int) []string { return []string{addrEnv + "=" + m.Endpoint().Addr} }}).Rank(0)

	s, err := c.Connect(ctx, 1, 1)
	require.NoError(t, err, echo.Output())
	defer s.Close()
	line, _ := echo.Next(t, testTimeout)
	require.Equal(t, "ready", line)
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
	killed := echo.Kill(t)
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
	assert.Empty(t, segments(t, echo.Pid()), "the killed process's")
}

package testjob

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	RunRank(map[string]func() int{
		// echo says who it is, copies one line of its input to its
		// output, complains on stderr, and exits 5.
		"echo": func() int {
			fmt.Printf("rank %s of %s\n", os.Getenv("RINGO_RANK"), os.Getenv("RINGO_WORLD_SIZE"))
			line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
			fmt.Print("got " + line)
			fmt.Fprintln(os.Stderr, "complaint", os.Getenv("EXTRA"))
			return 5
		},
		// sleeper says so and waits to be killed.
		"sleeper": func() int {
			fmt.Println("sleeping")
			select {}
		},
	})
	goleak.VerifyTestMain(m)
}

func TestProcessesSpeakAndExit(t *testing.T) {
	job := Start(t, Config{Ranks: 3, Role: "echo", Env: func(r int) []string { return []string{fmt.Sprintf("EXTRA=x%d", r)} }})
	require.Equal(t, 3, job.Ranks())
	job.AwaitFirst(t, 30*time.Second, func(r int) string { return fmt.Sprintf("rank %d of 3", r) })
	for r := range 3 {
		rk := job.Rank(r)
		_, err := io.WriteString(rk.Stdin(), fmt.Sprintf("hello %d\n", r))
		require.NoError(t, err)
		line, at := rk.Next(t, 30*time.Second)
		assert.Equal(t, fmt.Sprintf("got hello %d", r), line)
		assert.WithinDuration(t, time.Now(), at, 30*time.Second)
		end, err := rk.Exit(t, 30*time.Second)
		assert.False(t, end.Before(at), "the exit comes after the last line")
		var exit interface{ ExitCode() int }
		require.True(t, errors.As(err, &exit), "%v", err)
		assert.Equal(t, 5, rk.ExitCode())
		assert.Contains(t, rk.Output(), fmt.Sprintf("complaint x%d", r), "stderr is in the output")
		assert.Positive(t, rk.Pid())
	}
}

func TestKilledProcessEnds(t *testing.T) {
	job := Start(t, Config{Ranks: 2, Role: "sleeper"})
	job.AwaitFirst(t, 30*time.Second, func(r int) string { return "sleeping" })
	killed := job.Rank(1).Kill(t)
	end, err := job.Rank(1).Exit(t, 30*time.Second)
	require.Error(t, err)
	assert.False(t, end.Before(killed))
	assert.Equal(t, -1, job.Rank(1).ExitCode(), "a signal ended it")
	// Rank 0 still sleeps; the test's end kills it.
}

// A test that expects a line that never comes fails, saying what the rank
// said instead.
func TestAwaitFirstFailsOnOtherWords(t *testing.T) {
	job := Start(t, Config{Ranks: 1, Role: "sleeper"})
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		job.AwaitFirst(ft, 30*time.Second, func(int) string { return "awake" })
	}()
	<-done
	assert.Contains(t, ft.msg, "sleeping")
}

// fatalRecorder records a failure and ends the goroutine as testing would.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Errorf(format string, args ...any) {
	f.msg += fmt.Sprintf(format, args...)
}
func (f *fatalRecorder) FailNow()                          { runtime.Goexit() }
func (f *fatalRecorder) Fatalf(format string, args ...any) { f.Errorf(format, args...); f.FailNow() }

func TestEachAndCloseAll(t *testing.T) {
	errs := Each(4, func(r int) error {
		if r == 2 {
			return errors.New("two")
		}
		return nil
	})
	require.Len(t, errs, 4)
	assert.EqualError(t, errs[2], "two")
	RequireAllOK(t, errs[:2])

	var closed atomic.Int32
	cs := []closer{{&closed}, {&closed}, {&closed}}
	CloseAll(cs)
	assert.Equal(t, int32(3), closed.Load())
}

type closer struct{ n *atomic.Int32 }

func (c closer) Close() error { c.n.Add(1); return nil }

func TestDriverRunsEveryRankOncePerRun(t *testing.T) {
	counts := make([]int, 3)
	d := NewDriver(t, 3, func(r int) error {
		counts[r]++
		return nil
	})
	for range 5 {
		require.NoError(t, d.Run())
	}
	assert.Equal(t, []int{5, 5, 5}, counts)
	d.RequireNoAllocs(t, "step")
	failing := NewDriver(t, 2, func(r int) error {
		if r == 1 {
			return errors.New("rank 1 failed")
		}
		return nil
	})
	assert.EqualError(t, failing.Run(), "rank 1 failed")
}

func TestFreeAddr(t *testing.T) {
	assert.True(t, strings.HasPrefix(FreeAddr(t), "127.0.0.1:"))
}

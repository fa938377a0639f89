//go:build unix

package main

import (
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLinkCutMidJobIsFoundByHeartbeat cuts one host's link while 4 ranks run
// collectives in a loop. No FIN or reset reaches anyone: only the heartbeat
// can tell. Every other rank must fail naming the cut rank within the
// heartbeat window (1 s here), well before the call timeout (120 s).
func TestLinkCutMidJobIsFoundByHeartbeat(t *testing.T) {
	t.Parallel()
	script, prefix := testbed(t, 4, "--rate", "1gbit")
	const heartbeat = time.Second
	p := ringrunOnHost0(t, prefix, "--hosts", hostsFlag(prefix, 4), "--agent", "ip netns exec", "--addr", "10.77.0.1",
		"--timeout", "120s", "-x", "RINGO_HEARTBEAT="+heartbeat.String(),
		"--", ringcheckBn, "-iters", "1000000", "-sizes", "1000", "-timeout", "300s")
	looping := regexp.MustCompile(`^out: \[\d\] rank \d of 4 looping$`)
	deadline := time.After(60 * time.Second)
	for seen := 0; seen < 4; {
		select {
		case l := <-p.lines:
			if looping.MatchString(l) {
				seen++
			}
		case <-deadline:
			require.FailNowf(t, "timeout", "ranks did not start looping\nstdout:\n%s\nstderr:\n%s", p.out(), p.err())
		}
	}
	cut := time.Now()
	netnsRun(t, script, prefix, "cut", "3")
	code := p.wait(60 * time.Second)
	took := p.exitTime().Sub(cut)
	t.Logf("ringrun exited %v after the cut (heartbeat %v)", took.Round(time.Millisecond), heartbeat)
	require.NotEqual(t, 0, code, "stdout:\n%s\nstderr:\n%s", p.out(), p.err())
	assert.Less(t, took, 10*heartbeat, "found by the heartbeat, not the 120 s timeout")
	// Both ends of the cut find it at the same moment; ringrun stops the
	// others as soon as the first rank fails, so which ranks print is a
	// race. What holds: someone reports the silence, and every rank that
	// could still talk to the others and reports names rank 3.
	stderr := p.err()
	assert.Contains(t, stderr, "nothing heard for 1s")
	failed := regexp.MustCompile(`(?m)^\[(\d)\] rank \d of 4 FAILED: (.*)$`).FindAllStringSubmatch(stderr, -1)
	require.NotEmpty(t, failed, stderr)
	for _, f := range failed {
		assert.Contains(t, f[2], "communicator aborted")
		if f[1] != "3" {
			assert.Contains(t, f[2], "rank 3", "rank %s must name the cut rank", f[1])
		}
	}
}

package shard_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/shard"
)

// formHosts forms len(hosts) ranks over loopback TCP, rank r saying it runs
// on hosts[r] (Config.Host, as RINGO_HOST would): the communicator's
// topology, and so Comm.LocalSize, follows the names.
func formHosts(t *testing.T, hosts []string) []*collective.Comm {
	t.Helper()
	addr := testjob.FreeAddr(t)
	n := len(hosts)
	comms := make([]*collective.Comm, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := n - 1; r >= 0; r-- { // rank 0 serves the rendezvous: last
		wg.Add(1)
		go func() {
			defer wg.Done()
			comms[r], errs[r] = collective.New(ctx, collective.Config{
				Rank: r, Size: n, Addr: addr, Transport: "tcp", Host: hosts[r],
				Token: "hostgroup", JobID: "hostgroup", Timeout: testTimeout,
			})
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range comms {
			if c != nil {
				c.Close()
			}
		}
	})
	require.NoError(t, errors.Join(errs...))
	return comms
}

// onComms runs fn on every rank of comms at once and returns each rank's
// error.
func onComms(comms []*collective.Comm, fn func(c *collective.Comm) error) []error {
	return testjob.Each(len(comms), func(r int) error { return fn(comms[r]) })
}

// Hybrid with GroupSize left zero makes each host a group, as the
// communicator sees the hosts: on two hosts of two ranks every rank finds
// groups of 2 and trains bitwise as with GroupSize 2 given (and as
// DataParallel); on one host the group is every rank.
func TestHybridDefaultGroupIsAHost(t *testing.T) {
	leakCheck(t)
	const steps = 3
	for _, hosts := range [][]string{{"a", "a", "b", "b"}, {"a", "a", "a"}, {"a", "b", "c"}} {
		t.Run(strings.Join(hosts, ""), func(t *testing.T) {
			comms := formHosts(t, hosts)
			n := len(hosts)
			wantGroup := comms[0].LocalSize()
			want := make([]result, n)
			require.NoError(t, errors.Join(onComms(comms, func(c *collective.Comm) (err error) {
				want[c.Rank()], err = trainDDP(c, oddLayout, adam, steps, 1)
				return err
			})...))
			for _, group := range []int{wantGroup, 0} {
				got := make([]result, n)
				groups := make([]int, n)
				require.NoError(t, errors.Join(onComms(comms, func(c *collective.Comm) error {
					units := oddLayout.model()
					fs, err := shard.New(ctx, c, units, shard.Options{Strategy: shard.Hybrid, GroupSize: group})
					if err != nil {
						return err
					}
					defer fs.Close()
					groups[c.Rank()] = fs.Options().GroupSize
					got[c.Rank()], err = trainFSDP(fs, units, adam(), fsdpRun{steps: steps, micro: 1})
					return err
				})...))
				for r := range n {
					require.Equal(t, wantGroup, groups[r], "GroupSize %d: rank %d's group", group, r)
					requireBitwise(t, want[r], got[r], "GroupSize %d: rank %d", group, r)
				}
			}
		})
	}
}

// Where the hosts cannot be Hybrid's default groups (hosts of different
// sizes; a host's ranks not consecutive), New fails on every rank with
// ErrInvalid and says why; a rank that leaves GroupSize zero where rank 0
// sets it fails with ErrMismatch naming both.
func TestHybridDefaultGroupNeedsEqualConsecutiveHosts(t *testing.T) {
	leakCheck(t)
	for _, c := range []struct {
		hosts  []string
		groups []int
		is     error
		says   string
	}{
		{[]string{"a", "a", "a", "b"}, []int{0, 0, 0, 0}, collective.ErrInvalid,
			"the hosts run different numbers of ranks (rank 0's host 3, rank 3's 1): set Options.GroupSize"},
		{[]string{"a", "b", "b", "b", "a", "a"}, []int{0, 0, 0, 0, 0, 0}, collective.ErrInvalid,
			"the hosts' ranks are not consecutive (rank 1 is number 0 on its host, where consecutive hosts of 3 ranks would make it 1)"},
		{[]string{"a", "b", "a", "b"}, []int{0, 0, 0, 0}, collective.ErrInvalid, "the hosts' ranks are not consecutive"},
		{[]string{"a", "a", "b", "b"}, []int{2, 2, 0, 2}, collective.ErrMismatch,
			"rank 2's Options.GroupSize differs from rank 0's (2)"},
	} {
		t.Run(fmt.Sprint(c.hosts, c.groups), func(t *testing.T) {
			comms := formHosts(t, c.hosts)
			errs := onComms(comms, func(comm *collective.Comm) error {
				fs, err := shard.New(ctx, comm, oddLayout.model(), shard.Options{Strategy: shard.Hybrid, GroupSize: c.groups[comm.Rank()]})
				if err == nil {
					fs.Close()
				}
				return err
			})
			for r, err := range errs {
				require.ErrorIs(t, err, c.is, "rank %d", r)
				require.ErrorContains(t, err, c.says, "rank %d", r)
			}
		})
	}
}

package collective

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/transport"
)

// mixedWorld forms 4 ranks on two "hosts" of two ranks each, the way a job
// with shared memory inside a host and TCP between hosts will be formed:
// ranks of one host talk through a pipe hub of their own, ranks of
// different hosts through TCP meshes, and each rank routes every peer with
// transport.PerPeer. The communicator sees only its connector.
func mixedWorld(t *testing.T, cfg Config) []*Comm {
	t.Helper()
	const size = 4
	host := func(r int) int { return r / 2 }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hubs := []*transport.PipeHub{transport.NewPipeHub(2), transport.NewPipeHub(2)}
	meshes := make([]*transport.Mesh, size)
	eps := make([]transport.Endpoint, size)
	for r := range size {
		m, err := transport.ListenMesh(ctx, transport.NewTCPNetwork(nil), "127.0.0.1", transport.Identity{Token: []byte("t"), Rank: r, Size: size}, nil)
		require.NoError(t, err)
		meshes[r], eps[r] = m, m.Endpoint()
	}
	for _, m := range meshes {
		require.NoError(t, m.Start(eps))
	}
	comms := make([]*Comm, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for r := range size {
		byPeer := make([]transport.Connector, size)
		local := hubs[host(r)].Connector(r)
		for p := range size {
			switch {
			case p == r:
			case host(p) == host(r):
				byPeer[p] = local
			default:
				byPeer[p] = meshes[r]
			}
		}
		place := &placement{host: []int{0, 0, 1, 1}, local: local.Cost(), remote: meshes[r].Cost()}
		w := world{conn: newShared(transport.PerPeer(byPeer), 1), place: place}
		wg.Add(1)
		go func() {
			defer wg.Done()
			streams, err := connectMesh(ctx, w, r, size)
			if err != nil {
				errs[r] = err
				w.conn.release()
				return
			}
			comms[r] = newComm(r, size, streams, cfg, w)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range comms {
			if c != nil {
				go c.Close()
			}
		}
	})
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
	return comms
}

func onEach(comms []*Comm, fn func(r int, c *Comm) error) error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = fn(r, c)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			return fmt.Errorf("rank %d: %w", r, err)
		}
	}
	return nil
}

// A communicator over a mixed mesh runs collectives, makes
// sub-communicators (within a host: pipes only; across hosts: TCP only)
// and point-to-point channels, all through the one connector.
func TestMixedMeshRunsEverything(t *testing.T) {
	comms := mixedWorld(t, Config{Timeout: 30 * time.Second})
	for _, count := range []int{1, 3, 100_003} { // doubling for the small, a ring for the large
		bufs := make([][]float32, len(comms))
		for r := range bufs {
			bufs[r] = make([]float32, count)
			for i := range bufs[r] {
				bufs[r][i] = float32((r*5 + i) % 11)
			}
		}
		require.NoError(t, onEach(comms, func(r int, c *Comm) error { return AllReduce(bg(), c, bufs[r], Sum) }))
		for i := range count {
			var want float32
			for r := range comms {
				want += float32((r*5 + i) % 11)
			}
			for r := range comms {
				require.Equal(t, want, bufs[r][i], "count=%d rank %d element %d", count, r, i)
			}
		}
	}
	for _, split := range []struct {
		name  string
		color func(r int) int
	}{{"within hosts", func(r int) int { return r / 2 }}, {"across hosts", func(r int) int { return r % 2 }}} {
		subs := make([]*Comm, len(comms))
		require.NoError(t, onEach(comms, func(r int, c *Comm) error {
			var err error
			subs[r], err = c.Split(bg(), split.color(r), r)
			return err
		}), split.name)
		got := make([][]int64, len(comms))
		require.NoError(t, onEach(subs, func(r int, c *Comm) error {
			got[r] = []int64{int64(r)}
			return AllReduce(bg(), c, got[r], Sum)
		}), split.name)
		for r := range comms {
			var want int64
			for q := range comms {
				if split.color(q) == split.color(r) {
					want += int64(q)
				}
			}
			require.Equal(t, want, got[r][0], "%s: rank %d", split.name, r)
		}
		for _, s := range subs {
			require.NoError(t, s.Close())
		}
	}
	// Send/Recv within a host and across hosts.
	msgs := make([][]int32, len(comms))
	require.NoError(t, onEach(comms, func(r int, c *Comm) error {
		msgs[r] = []int32{int32(100 + r)}
		switch r {
		case 0:
			if err := Send(bg(), c, msgs[r], 1, 0); err != nil {
				return err
			}
			return Send(bg(), c, msgs[r], 3, 0)
		case 1, 3:
			return Recv(bg(), c, msgs[r], 0, 0)
		}
		return nil
	}))
	require.Equal(t, []int32{100}, msgs[1])
	require.Equal(t, []int32{100}, msgs[3])
	require.Equal(t, []int32{102}, msgs[2])
}

func bg() context.Context { return context.Background() }

package collective

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"slices"
	"time"

	"github.com/ringo-ml/ringo/ring"
	"github.com/ringo-ml/ringo/transport"
)

// Undefined is the color of a rank that takes part in Split without
// joining any of the new communicators (MPI_UNDEFINED).
const Undefined = -1

// badColor marks a rank whose Group arguments were invalid, so that every
// rank, not only the one that made the mistake, refuses the call.
const badColor = -2

// Split partitions the communicator, as MPI_Comm_split does: every rank
// calls it (it is a call on c, in c's issue order), ranks that pass the same
// color form one new communicator, ordered by key and then by their rank in
// c. A rank that passes Undefined gets nil.
//
// The new communicator has connections of its own (streams of the same
// transport), so its calls are independent of c's and of its siblings':
// they may run at the same time, from other goroutines, in any order
// relative to c's calls. Failures are independent too; closing c leaves its
// children usable. Close each communicator when done with it.
func (c *Comm) Split(ctx context.Context, color, key int) (*Comm, error) {
	if color < Undefined {
		color = badColor
	}
	sub, err := c.split(ctx, "Split", color, key, 0)
	return sub, err
}

// Group makes a communicator of the given ranks of c, in the order given
// (rank i of the new communicator is ranks[i]), as torch.distributed's
// new_group does: every rank of c calls it with the same list; ranks not in
// the list get nil. See Split for how the new communicator relates to c.
func (c *Comm) Group(ctx context.Context, ranks []int) (*Comm, error) {
	color, key := Undefined, 0
	var bad error
	seen := make(map[int]bool, len(ranks))
	var list []byte // the ranks as bytes, hashed: every rank must pass the same
	for i, r := range ranks {
		switch {
		case r < 0 || r >= c.size:
			bad = invalidf("Group: rank %d is not a rank of a communicator of %d", r, c.size)
		case seen[r]:
			bad = invalidf("Group: rank %d is listed twice", r)
		}
		seen[r] = true
		if r == c.rank {
			color, key = 0, i
		}
		list = binary.LittleEndian.AppendUint64(list, uint64(r))
	}
	if bad != nil {
		color = badColor
	}
	h := fnv.New64a()
	h.Write(list)
	sub, err := c.split(ctx, "Group", color, key, h.Sum64()|1) // never 0, which Split sends
	if err == nil && bad != nil {
		err = fmt.Errorf("ringo: Group on rank %d: %w", c.rank, bad)
	}
	return sub, err
}

// split exchanges every rank's (color, key, list) through c, checks them
// (every rank sees the same table, so every rank reaches the same verdict)
// and connects this rank's new communicator.
func (c *Comm) split(ctx context.Context, call string, color, key int, list uint64) (*Comm, error) {
	mine := []int64{int64(color), int64(key), int64(list)}
	table := make([]int64, len(mine)*c.size)
	if err := c.begin(ctx, signature[int64](kindSplit, 0, len(mine), 0)); err != nil {
		return nil, err
	}
	seq := c.seq // the same on every rank: it names the new communicators
	if err := c.end(ring.AllGather(c.ring, mine, table)); err != nil {
		return nil, err
	}
	type member struct{ key, rank int }
	var members []member
	for r := range c.size {
		col, k, l := table[3*r], table[3*r+1], uint64(table[3*r+2])
		switch {
		case col == badColor && call == "Group":
			return nil, fmt.Errorf("ringo: Group on rank %d: %w", c.rank, invalidf("rank %d passed an invalid list of ranks", r))
		case col < Undefined:
			return nil, fmt.Errorf("ringo: Split on rank %d: %w", c.rank, invalidf("rank %d passed a color below Undefined", r))
		case l != uint64(table[2]):
			return nil, fmt.Errorf("ringo: %s on rank %d: %w", call, c.rank, invalidf("rank %d passed another list of ranks than rank 0", r))
		case col == int64(color):
			members = append(members, member{int(k), r})
		}
	}
	if color == Undefined {
		return nil, nil
	}
	slices.SortFunc(members, func(a, b member) int {
		if a.key != b.key {
			return a.key - b.key
		}
		return a.rank - b.rank
	})
	w := world{
		conn:    c.world.conn,
		ranks:   make([]int, len(members)),
		channel: channelOf(c.world.channel, "split", seq, uint64(color)),
		place:   c.world.place,
	}
	rank := 0
	for i, m := range members {
		w.ranks[i] = c.world.rank(m.rank)
		if m.rank == c.rank {
			rank = i
		}
	}
	if t := c.timeout; t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, t, fmt.Errorf("%w: connecting the new communicator took longer than %v", ErrTimeout, t))
		defer cancel()
	}
	// A member that fails or leaves the parent now will never connect: stop
	// waiting for it then, not at the timeout.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watch := func(done <-chan struct{}, cause func() error) {
		go func() {
			select {
			case <-done:
				cancel(cause())
			case <-ctx.Done():
			}
		}()
	}
	watch(c.fail.Done(), c.Err)
	for _, m := range members {
		if l := c.links[m.rank]; l != nil {
			watch(l.Dead(), func() error {
				return fmt.Errorf("%w: rank %d left the parent communicator before connecting", ErrPeerLost, m.rank)
			})
		}
	}
	if h := splitConnecting; h != nil {
		h(c)
	}
	streams, err := connectMesh(ctx, w, rank, len(members))
	if err == nil {
		err = confirm(ctx, streams)
	}
	if err != nil && ctx.Err() == nil {
		// A peer closed its end: it gave up, and the abort of the parent
		// that says why (or the loss of the peer) is on its way. Its
		// reason, not this rank's view of it, is what every rank reports.
		t := time.NewTimer(closeGrace)
		select {
		case <-ctx.Done():
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		case <-t.C:
		}
		t.Stop()
	}
	if err != nil {
		// The other members are connecting too, and would wait for this
		// rank until their timeout: the failure aborts the parent, which
		// every rank watches (above), so that all of them fail at once and
		// say why. Split was a call on the parent, in its order: giving
		// it up is abandoning a call (see begin).
		c.failCall(err, fmt.Sprintf("%s at op #%d while connecting the new communicator", call, seq))
		return nil, fmt.Errorf("ringo: %s on rank %d: %w", call, c.rank, c.aborted())
	}
	w.conn.retain()
	return newComm(rank, len(members), streams, c.cfg, w), nil
}

// confirmByte is what every member of a new communicator sends every
// other member once connected (see confirm).
const confirmByte = 'S'

// confirm exchanges one byte with every other member over the new
// streams, and closes them all if that fails (ctx done: this rank or the
// parent gave up). A member that dialed a peer has a stream as soon as the
// peer's listener took it, whether or not the peer will ever use it (a
// peer that gave up while connecting never does): only the peer's byte
// says the peer has its streams too. Without it, this rank's new
// communicator would wait on that peer until its timeout; with it, this
// rank waits until the peer's byte or the abort of the parent, which the
// peer's failure causes (split).
func confirm(ctx context.Context, streams []transport.Stream) error {
	stop := context.AfterFunc(ctx, func() {
		for _, s := range streams {
			if s != nil {
				_ = s.SetDeadline(time.Now()) // ends the reads and writes below
			}
		}
	})
	errs := make(chan error, len(streams))
	n := 0
	for _, s := range streams {
		if s == nil {
			continue
		}
		n++
		go func() {
			wrote := make(chan error, 1)
			go func() { // at once: a pipe has no buffer, and the peer writes first too
				_, err := s.Write([]byte{confirmByte})
				wrote <- err
			}()
			var b [1]byte
			_, err := io.ReadFull(s, b[:])
			if err == nil && b[0] != confirmByte {
				err = fmt.Errorf("%w: a new communicator's peer sent %#x, not its confirmation", transport.ErrProtocol, b[0])
			}
			if err != nil {
				_ = s.SetDeadline(time.Now()) // the write too
			}
			errs <- errors.Join(err, <-wrote)
		}()
	}
	var err error
	for range n {
		err = errors.Join(err, <-errs)
	}
	if !stop() { // ctx is done: its deadlines are on the streams
		err = context.Cause(ctx)
	}
	if err != nil {
		for _, s := range streams {
			if s != nil {
				_ = s.Close()
			}
		}
		return fmt.Errorf("confirming the new communicator's connections: %w", err)
	}
	return nil
}

// splitConnecting, when set (by tests), is called by split on the rank's
// goroutine just before it connects the new communicator.
var splitConnecting func(parent *Comm)

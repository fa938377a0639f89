package collective_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/kernel"
)

// Every rank sends to the next and receives from the previous one, for every
// odd count and several element types, on mem, TCP, shared memory and a
// mixed mesh (two hosts); then several tagged
// messages in a row meet in order.
func TestSendRecvAroundTheRing(t *testing.T) {
	for _, tr := range []struct {
		name string
		form func(t *testing.T, n int) []*collective.Comm
	}{
		{"mem", func(t *testing.T, n int) []*collective.Comm { return local(t, n, collective.Config{}) }},
		{"tcp", func(t *testing.T, n int) []*collective.Comm { return formTCP(t, n, collective.Config{}) }},
		{"shm", func(t *testing.T, n int) []*collective.Comm { return formShm(t, n, collective.Config{}) }},
		{"mixed", func(t *testing.T, n int) []*collective.Comm { return formTwoHosts(t, n, collective.Config{}) }},
	} {
		for _, n := range []int{2, 3, 5} {
			t.Run(fmt.Sprintf("%s/n=%d", tr.name, n), func(t *testing.T) {
				comms := tr.form(t, n)
				t.Run("int8", ringPass[int8](comms))
				t.Run("uint8", ringPass[uint8](comms))
				t.Run("int32", ringPass[int32](comms))
				t.Run("uint32", ringPass[uint32](comms))
				t.Run("int64", ringPass[int64](comms))
				t.Run("uint64", ringPass[uint64](comms))
				t.Run("float32", ringPass[float32](comms))
				t.Run("float64", ringPass[float64](comms))
			})
		}
	}
}

func ringPass[T collective.Elem](comms []*collective.Comm) func(t *testing.T) {
	return func(t *testing.T) {
		n := len(comms)
		counts := oddCounts(n)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			next, prev := (r+1)%n, (r+n-1)%n
			for tag, count := range counts {
				w := collective.SendAsync(ctx, c, inputs[T](r, count, collective.Sum), next, tag)
				got := make([]T, count)
				if err := collective.Recv(ctx, c, got, prev, tag); err != nil {
					return err
				}
				if err := w.Wait(); err != nil {
					return err
				}
				require.Equal(t, kernel.Bytes(inputs[T](prev, count, collective.Sum)), kernel.Bytes(got), "rank %d count %d", r, count)
			}
			return nil
		}))
	}
}

// Two ranks exchange 8 MiB at once, each sending before it receives: with
// SendAsync neither waits for the other.
func TestSendRecvExchangeOfLargeMessagesDoesNotDeadlock(t *testing.T) {
	for _, tr := range []struct {
		name  string
		comms func(t *testing.T) []*collective.Comm
	}{
		{"mem", func(t *testing.T) []*collective.Comm { return local(t, 2, collective.Config{}) }},
		{"tcp", func(t *testing.T) []*collective.Comm { return formTCP(t, 2, collective.Config{}) }},
		{"shm", func(t *testing.T) []*collective.Comm { return formShm(t, 2, collective.Config{}) }},
	} {
		t.Run(tr.name, func(t *testing.T) {
			const count = 2<<20 + 3
			requireAllOK(t, each(tr.comms(t), func(r int, c *collective.Comm) error {
				out := inputs[float32](r, count, collective.Sum)
				in := make([]float32, count)
				w := collective.SendAsync(ctx, c, out, 1-r, 9)
				if err := collective.Recv(ctx, c, in, 1-r, 9); err != nil {
					return err
				}
				if err := w.Wait(); err != nil {
					return err
				}
				require.Equal(t, inputs[float32](1-r, count, collective.Sum), in)
				return nil
			}))
		})
	}
}

// Point-to-point messages and collectives on one communicator, from two
// goroutines per rank, do not wait for each other's frames.
func TestSendRecvBesideCollectives(t *testing.T) {
	comms := local(t, 4, tinyPipeline)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		done := make(chan error, 1)
		go func() {
			for k := range 20 {
				buf := []int32{int32(r), int32(k)}
				if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
					done <- err
					return
				}
				if buf[0] != 6 || buf[1] != int32(4*k) {
					done <- fmt.Errorf("rank %d: AllReduce %d gave %v", r, k, buf)
					return
				}
			}
			done <- nil
		}()
		// Ping-pong between ranks 0-1 and 2-3.
		peer := r ^ 1
		for k := range 20 {
			msg := []int64{int64(r*1000 + k)}
			if r%2 == 0 {
				if err := collective.Send(ctx, c, msg, peer, k); err != nil {
					return err
				}
				if err := collective.Recv(ctx, c, msg, peer, k); err != nil {
					return err
				}
				require.Equal(t, int64(peer*1000+k), msg[0])
			} else {
				if err := collective.Recv(ctx, c, msg, peer, k); err != nil {
					return err
				}
				require.Equal(t, int64(peer*1000+k), msg[0])
				msg[0] = int64(r*1000 + k)
				if err := collective.Send(ctx, c, msg, peer, k); err != nil {
					return err
				}
			}
		}
		return <-done
	}))
}

// A Send and a Recv that disagree on tag, type or count fail on both
// ranks with ErrMismatch naming the calls.
func TestSendRecvMismatchFailsBothRanks(t *testing.T) {
	cases := map[string]func(c *collective.Comm) error{
		"tag":   func(c *collective.Comm) error { return collective.Recv(ctx, c, make([]float32, 5), 0, 8) },
		"count": func(c *collective.Comm) error { return collective.Recv(ctx, c, make([]float32, 6), 0, 7) },
		"type":  func(c *collective.Comm) error { return collective.Recv(ctx, c, make([]int32, 5), 0, 7) },
	}
	for name, recv := range cases {
		t.Run(name, func(t *testing.T) {
			comms := local(t, 2, collective.Config{})
			errs := each(comms, func(r int, c *collective.Comm) error {
				if r == 0 {
					if err := collective.Send(ctx, c, make([]float32, 5), 1, 7); err != nil {
						return err
					}
					// The send may be written before the receiver objects:
					// the next call on the communicator reports it.
					return collective.Barrier(ctx, c)
				}
				return recv(c)
			})
			for r, err := range errs {
				require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
			}
			require.ErrorContains(t, errs[1], "tag=7")
		})
	}
}

// Bad peers and tags are refused at once, on the calling rank only: nothing
// was sent, and the communicator stays usable.
func TestSendRecvRefuseBadArguments(t *testing.T) {
	comms := local(t, 3, collective.Config{})
	c := comms[1]
	require.ErrorIs(t, collective.Send(ctx, c, []float32{1}, 1, 0), collective.ErrInvalid)
	require.ErrorIs(t, collective.Send(ctx, c, []float32{1}, 3, 0), collective.ErrInvalid)
	require.ErrorIs(t, collective.Recv(ctx, c, []float32{1}, -1, 0), collective.ErrInvalid)
	require.ErrorIs(t, collective.Recv(ctx, c, []float32{1}, 0, -5), collective.ErrInvalid)
	require.ErrorIs(t, collective.SendAsync(ctx, c, []float32{1}, 7, 0).Wait(), collective.ErrInvalid)
	checkEveryCollective(t, comms)
}

// A sub-communicator's ranks are its own: Send(peer) names a rank of it.
func TestSendRecvOnASubCommunicator(t *testing.T) {
	comms := local(t, 4, collective.Config{})
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		sub, err := c.Split(ctx, 0, -r) // sub rank = 3 - r
		if err != nil {
			return err
		}
		defer sub.Close()
		me := sub.Rank()
		buf := []int64{int64(r)}
		if me == 0 {
			return collective.Send(ctx, sub, buf, 1, 0)
		}
		if me == 1 {
			if err := collective.Recv(ctx, sub, buf, 0, 0); err != nil {
				return err
			}
			require.Equal(t, int64(3), buf[0]) // sub rank 0 is parent rank 3
		}
		return nil
	}))
}

// A Recv that nobody will match ends when its communicator is closed from
// another goroutine (and the peer learns of it), not at the timeout.
func TestCloseEndsAPendingRecv(t *testing.T) {
	comms := local(t, 2, collective.Config{Timeout: time.Hour})
	errc := make(chan error, 1)
	go func() { errc <- collective.Recv(ctx, comms[0], make([]float32, 4), 1, 0) }()
	w := collective.RecvAsync(ctx, comms[1], make([]float32, 4), 0, 0)
	require.NoError(t, comms[0].Close())
	err := <-errc
	require.Error(t, err)
	require.ErrorIs(t, w.Wait(), collective.ErrAborted)
}

// A Send and its Recv allocate nothing once the links are made, over mem,
// TCP and shared memory: point-to-point messages are on the hot path of pipeline stages.
func TestSendRecvSteadyStateAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, tr := range []string{"mem", "tcp", "shm"} {
		t.Run(tr, func(t *testing.T) {
			comms := formComms(t, tr, 2, collective.Config{})
			out, in := []float32{1, 2, 3}, make([]float32, 3)
			requireNoAllocs(t, newDriver(t, comms, func(r int, c *collective.Comm) error {
				if r == 0 {
					return collective.Send(ctx, c, out, 1, 5)
				}
				return collective.Recv(ctx, c, in, 0, 5)
			}), "Send and Recv")
			require.Equal(t, out, in)
		})
	}
}

// A Recv (or Send) whose first message to a peer has to connect, after
// that peer aborted and closed its communicator (its listener is gone, a
// dial is refused), fails with the peer's reason, not with the refused
// connection; after a plain Close, with an error that names the peer and
// matches ErrAborted. Over mem, TCP and shared memory, both directions (the
// higher rank dials, the lower one waits for the dial), several rounds.
func TestPointToPointAfterThePeerLeftSaysWhy(t *testing.T) {
	for _, tr := range []string{"mem", "tcp", "shm"} {
		t.Run(tr, func(t *testing.T) {
			for round := range 6 {
				aborted := round%2 == 0
				comms := formComms(t, tr, 2, collective.Config{Timeout: time.Minute})
				leaver, stayer := round/2%2, 1-round/2%2
				reason := fmt.Sprintf("round %d went wrong", round)
				if aborted {
					comms[leaver].Abort(errors.New(reason))
				}
				require.NoError(t, comms[leaver].Close())
				buf := make([]float32, 4)
				var err error
				if round/4 == 0 {
					err = collective.Recv(ctx, comms[stayer], buf, leaver, 0)
				} else {
					err = collective.Send(ctx, comms[stayer], buf, leaver, 0)
				}
				require.ErrorIs(t, err, collective.ErrAborted, "round %d", round)
				if aborted {
					require.ErrorContains(t, err, fmt.Sprintf("rank %d called Abort: %s", leaver, reason), "round %d", round)
				} else {
					require.ErrorContains(t, err, fmt.Sprintf("rank %d closed its communicator", leaver), "round %d", round)
				}
				closeAll(comms)
			}
		})
	}
}

// A Send whose message the peer received returns nil even when the peer
// closes its communicator right after its Recv: the message was
// delivered. Over mem, TCP and shared memory, small and large messages
// (a large one's last bytes are still being written when the peer has
// them), several rounds, first messages (which connect) and later ones.
func TestSendSucceedsWhenThePeerClosesRightAfterItsRecv(t *testing.T) {
	for _, tr := range []string{"mem", "tcp", "shm"} {
		for _, count := range []int{3, 1 << 18} {
			t.Run(fmt.Sprintf("%s/count=%d", tr, count), func(t *testing.T) {
				for round := range 6 {
					comms := formComms(t, tr, 2, collective.Config{Timeout: time.Minute})
					sender, receiver := round%2, 1-round%2
					out := make([]float32, count)
					for i := range out {
						out[i] = float32(round*7 + i%13)
					}
					in := make([]float32, count)
					msgs := 1 + round/2 // later messages reuse the link
					errs := each(comms, func(r int, c *collective.Comm) error {
						for range msgs {
							if r == sender {
								if err := collective.Send(ctx, c, out, receiver, 1); err != nil {
									return err
								}
								continue
							}
							if err := collective.Recv(ctx, c, in, sender, 1); err != nil {
								return err
							}
						}
						if r == receiver {
							return c.Close()
						}
						return nil
					})
					requireAllOK(t, errs)
					require.Equal(t, out, in, "round %d", round)
					closeAll(comms)
				}
			})
		}
	}
}

// A Recv gets the message its peer sent just before it closed its
// communicator, once an earlier message has come on that link (the peer
// has its end: its goodbye there comes after the message). Over mem, TCP
// and shared memory, several rounds.
func TestRecvGetsTheLastMessageOfAPeerThatClosed(t *testing.T) {
	for _, tr := range []string{"mem", "tcp", "shm"} {
		t.Run(tr, func(t *testing.T) {
			for round := range 8 {
				comms := formComms(t, tr, 2, collective.Config{Timeout: time.Minute})
				sender, receiver := round%2, 1-round%2
				first, last := []int32{int32(round)}, []int32{int32(round), 7, 8}
				gotFirst, gotLast := make([]int32, 1), make([]int32, 3)
				errs := each(comms, func(r int, c *collective.Comm) error {
					if r == sender {
						if err := collective.Send(ctx, c, first, receiver, 2); err != nil {
							return err
						}
						if err := collective.Send(ctx, c, last, receiver, 3); err != nil {
							return err
						}
						return c.Close()
					}
					if err := collective.Recv(ctx, c, gotFirst, sender, 2); err != nil {
						return err
					}
					// The sender may have closed by now.
					return collective.Recv(ctx, c, gotLast, sender, 3)
				})
				requireAllOK(t, errs)
				require.Equal(t, first, gotFirst, "round %d", round)
				require.Equal(t, last, gotLast, "round %d", round)
				closeAll(comms)
			}
		})
	}
}

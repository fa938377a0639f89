//go:build unix

package quic_test

import (
	"context"
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"

	qgo "github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/quic"
)

// BenchmarkVersusRaw puts a QUIC AllReduce next to its references, measured
// in the same run and interleaved (each iteration runs all three, in a
// rotating order, so that drift and the load of other processes fall on all
// of them alike):
//
//   - raw: one quic-go stream alone (default quic-go configuration, one
//     large Write), moving the bytes one rank sends in the AllReduce
//     (2(N-1)/N of the buffer);
//   - ring: N such streams at once, stream i from "rank" i to i+1, each
//     moving the same bytes: the traffic pattern and the CPU load of an
//     N-rank ring in one process, without ringo;
//   - AllReduce: a float32 Sum AllReduce over a communicator formed over
//     QUIC, ranks on goroutines of this process.
//
// raw-GB/s and ring-GB/s are per-stream rates, busbw-GB/s is the AllReduce's
// bus bandwidth (the rate at which each rank's link carries data), so the
// three compare directly; %raw and %ring are busbw over each. The
// *-cpu-ns/B are this process's CPU time (user and system) per byte one
// link carries: on a machine whose CPUs are the bottleneck and shared with
// other work, a steadier measure than the rates. lost-% is the share of the
// AllReduce links' packets quic-go declared lost, B/packet their mean size.
//
// On 2 CPUs the raw stream alone keeps both busy (its sender's and its
// receiver's connection loops), so N links cannot each move what one does:
// compare the AllReduce with the ring (%ring); %raw is bounded by
// ring/raw, about 1/N.
//
//	go test -run='^$' -bench=VersusRaw -benchtime=10x ./transport/quic/
func BenchmarkVersusRaw(b *testing.B) {
	for _, n := range []int{2, 4} {
		b.Run(fmt.Sprintf("ranks=%d/16MiB", n), func(b *testing.B) { versusRaw(b, n, 16<<20) })
	}
}

func versusRaw(b *testing.B, n, size int) {
	perLink := int64(size) * 2 * int64(n-1) / int64(n)
	single := rawLinks(b, 1)
	ring := rawLinks(b, n)
	links, stop := quic.RecordLinks()
	comms := formQUIC(b, n)
	stop()

	bufs := make([][]float32, n)
	for r := range bufs {
		bufs[r] = make([]float32, size/4)
	}
	allReduce := func() error { return allReduceAll(comms, bufs) }
	runs := []func() error{
		func() error { return single.send(perLink) },
		func() error { return ring.send(perLink) },
		allReduce,
	}
	for _, run := range runs { // warm up: windows and congestion windows grow
		require.NoError(b, run())
	}
	before := links.Stats()
	var took, cpu [3]time.Duration
	b.ResetTimer()
	for i := range b.N {
		for k := range runs {
			k = (k + i) % len(runs)
			start, cpu0 := time.Now(), cpuTime()
			if err := runs[k](); err != nil {
				b.Fatal(err)
			}
			took[k] += time.Since(start)
			cpu[k] += cpuTime() - cpu0
		}
	}
	b.StopTimer()
	after := links.Stats()
	rate := func(d time.Duration) float64 { return float64(perLink) * float64(b.N) / d.Seconds() / 1e9 }
	raw, rng, bus := rate(took[0]), rate(took[1]), rate(took[2])
	b.ReportMetric(raw, "raw-GB/s")
	b.ReportMetric(rng, "ring-GB/s")
	b.ReportMetric(bus, "busbw-GB/s")
	b.ReportMetric(100*bus/raw, "%raw")
	b.ReportMetric(100*bus/rng, "%ring")
	if sent := after.PacketsSent - before.PacketsSent; sent > 0 {
		b.ReportMetric(100*float64(after.PacketsLost-before.PacketsLost)/float64(sent), "lost-%")
		b.ReportMetric(float64(after.BytesSent-before.BytesSent)/float64(sent), "B/packet")
	}
	perByte := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(perLink) / float64(b.N) }
	b.ReportMetric(perByte(cpu[0]), "raw-cpu-ns/B")
	b.ReportMetric(perByte(cpu[1])/float64(n), "ring-cpu-ns/B")
	b.ReportMetric(perByte(cpu[2])/float64(n), "allreduce-cpu-ns/B")
	b.ReportMetric(0, "ns/op") // the sum of three different things: meaningless
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawStreams are plain quic-go streams, stream i from a client connection
// to a server connection, with a reader on each server side.
type rawStreams struct {
	out  []*qgo.Stream
	done chan error // one value per stream per send
	want chan int64 // how much each reader reads next
	buf  []byte     // what the streams send (its contents do not matter)
}

// rawLinks opens n quic-go connections over loopback, one stream each,
// with quic-go's default configuration.
func rawLinks(b *testing.B, n int) *rawStreams {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := &rawStreams{done: make(chan error, n), want: make(chan int64, n)}
	var wg sync.WaitGroup
	b.Cleanup(func() {
		close(r.want)
		wg.Wait()
	})
	for range n {
		sc, err := transport.NewCertificate()
		require.NoError(b, err)
		cc, err := transport.NewCertificate()
		require.NoError(b, err)
		ln, err := qgo.ListenAddr("127.0.0.1:0", sc.ServerConfig(nil), nil)
		require.NoError(b, err)
		c, err := qgo.DialAddr(ctx, ln.Addr().String(), cc.ClientConfig(sc.Fingerprint()), nil)
		require.NoError(b, err)
		s, err := c.OpenStreamSync(ctx)
		require.NoError(b, err)
		_, err = s.Write([]byte{0}) // a stream is announced by its first byte
		require.NoError(b, err)
		sconn, err := ln.Accept(ctx)
		require.NoError(b, err)
		in, err := sconn.AcceptStream(ctx)
		require.NoError(b, err)
		_, err = io.ReadFull(in, make([]byte, 1))
		require.NoError(b, err)
		r.out = append(r.out, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for want := range r.want {
				_, err := io.CopyN(io.Discard, in, want)
				r.done <- err
			}
		}()
		b.Cleanup(func() {
			_ = c.CloseWithError(0, "")
			_ = sconn.CloseWithError(0, "")
			_ = ln.Close()
		})
	}
	return r
}

// send writes size bytes on every stream at once and returns when the
// readers have read them all.
func (r *rawStreams) send(size int64) error {
	if int64(len(r.buf)) < size {
		r.buf = make([]byte, size)
	}
	buf := r.buf[:size]
	errs := make([]error, len(r.out))
	var wg sync.WaitGroup
	for i, s := range r.out {
		r.want <- size
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Write(buf)
		}()
	}
	wg.Wait()
	for range r.out {
		if err := <-r.done; err != nil {
			return err
		}
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

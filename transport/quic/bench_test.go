package quic_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	qgo "github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/transport"
)

// The QUIC figures to compare, measured in one run:
//
//	go test -run='^$' -bench=. -benchtime=20x ./transport/quic/
//
// (BenchmarkVersusRaw, in compare_test.go, interleaves the AllReduce with
// its references and reports the ratios.)
//
// BenchmarkRawQUICGo is quic-go by itself: one stream, 16 MiB writes, default
// quic-go configuration; BenchmarkStream is the same through ringo's link
// Stream (ringo's windows); BenchmarkAllReduce is a float32 Sum AllReduce of a
// communicator formed over QUIC, ranks on goroutines of this process.

const chunk = 16 << 20

func BenchmarkRawQUICGo(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sc, err := transport.NewCertificate()
	require.NoError(b, err)
	cc, err := transport.NewCertificate()
	require.NoError(b, err)
	ln, err := qgo.ListenAddr("127.0.0.1:0", sc.ServerConfig(nil), nil)
	require.NoError(b, err)
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			got <- -1
			return
		}
		defer c.CloseWithError(0, "")
		s, err := c.AcceptStream(ctx)
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.Copy(io.Discard, s)
		got <- n
	}()
	c, err := qgo.DialAddr(ctx, ln.Addr().String(), cc.ClientConfig(sc.Fingerprint()), nil)
	require.NoError(b, err)
	defer c.CloseWithError(0, "")
	s, err := c.OpenStreamSync(ctx)
	require.NoError(b, err)
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		if _, err := s.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	require.NoError(b, s.Close())
	require.Equal(b, int64(b.N)*chunk, <-got) // the time includes the last byte's arrival
	b.StopTimer()
}

func BenchmarkStream(b *testing.B) {
	ln, c, s := link(b)
	defer ln.Close()
	defer c.Close()
	defer s.Close()
	got := make(chan int64, 1)
	go func() {
		n, _ := io.CopyN(io.Discard, s, int64(b.N)*chunk)
		got <- n
	}()
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	require.Equal(b, int64(b.N)*chunk, <-got)
	b.StopTimer()
}

func BenchmarkAllReduce(b *testing.B) {
	for _, n := range []int{2, 4} {
		for _, size := range []int{1 << 20, 16 << 20} {
			b.Run(fmt.Sprintf("ranks=%d/%dMiB", n, size>>20), func(b *testing.B) {
				comms := formQUIC(b, n)
				bufs := make([][]float32, n)
				for r := range bufs {
					bufs[r] = make([]float32, size/4)
				}
				run := func() error { return allReduceAll(comms, bufs) }
				require.NoError(b, run())
				b.SetBytes(int64(size))
				b.ResetTimer()
				for range b.N {
					if err := run(); err != nil {
						b.Fatal(err)
					}
				}
				algbw := float64(size) * float64(b.N) / b.Elapsed().Seconds()
				b.ReportMetric(algbw*2*float64(n-1)/float64(n)/1e9, "busbw-GB/s")
			})
		}
	}
}

func formQUIC(b *testing.B, n int) []*collective.Comm {
	comms, err := collective.LocalNetwork(context.Background(), n, collective.Config{Token: "bench", Transport: "quic", Timeout: time.Minute})
	require.NoError(b, err)
	b.Cleanup(func() {
		for _, c := range comms {
			_ = c.Close()
		}
	})
	return comms
}

// allReduceAll runs one float32 Sum AllReduce on every rank at once.
func allReduceAll(comms []*collective.Comm, bufs [][]float32) error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = collective.AllReduce(context.Background(), c, bufs[r], collective.Sum)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

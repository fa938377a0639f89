package shm_test

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/shm"
)

// BenchmarkPingPong is the round trip of a message over a stream pair in
// one process: the ranks are goroutines, each side spinning then sleeping
// as configured.
//
//	go test -run='^$' -bench=PingPong ./transport/shm/
func BenchmarkPingPong(b *testing.B) {
	for _, spin := range []time.Duration{-1, 5 * time.Microsecond, shm.DefaultSpin, 100 * time.Microsecond} {
		for _, size := range []int{8, 64 << 10} {
			b.Run(fmt.Sprintf("spin=%v/%dB", spin, size), func(b *testing.B) {
				a, c := pair(b, shm.Options{Spin: spin})
				go func() { _, _ = io.Copy(c, c) }()
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				b.ResetTimer()
				for range b.N {
					if _, err := a.Write(buf); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(a, buf); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkStream is one direction's throughput: frames of size bytes
// written and read as transport.Conn does.
func BenchmarkStream(b *testing.B) {
	for _, seg := range []int{256 << 10, 1 << 20, 4 << 20} {
		for _, size := range []int{16 << 10, 256 << 10, 4 << 20} {
			b.Run(fmt.Sprintf("ring=%dKiB/%dKiB", seg>>10, size>>10), func(b *testing.B) {
				a, c := pair(b, shm.Options{SegmentBytes: seg})
				ca, cc := transport.NewConn(a), transport.NewConn(c)
				src, dst := make([]byte, size), make([]byte, size)
				done := make(chan error, 1)
				go func() {
					for range b.N {
						h := transport.Header{Type: transport.Data}
						if err := ca.WriteFrame(&h, src); err != nil {
							done <- err
							return
						}
					}
					done <- nil
				}()
				b.SetBytes(int64(size))
				for range b.N {
					var h transport.Header
					if err := cc.ReadHeader(&h); err != nil {
						b.Fatal(err)
					}
					if err := cc.ReadPayload(dst); err != nil {
						b.Fatal(err)
					}
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

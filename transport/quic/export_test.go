package quic

import (
	"sync"

	qgo "github.com/quic-go/quic-go"
)

// Links records every link made while it is installed, for benchmarks that
// report QUIC statistics of links they cannot reach otherwise.
type Links struct {
	mu  sync.Mutex
	all []*Stream
}

// RecordLinks installs a recorder; the returned function removes it. Not
// safe to use from parallel tests.
func RecordLinks() (*Links, func()) {
	l := &Links{}
	onNewStream = func(s *Stream) {
		l.mu.Lock()
		l.all = append(l.all, s)
		l.mu.Unlock()
	}
	return l, func() { onNewStream = nil }
}

// Stats sums the statistics of the recorded links' connections.
func (l *Links) Stats() qgo.ConnectionStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sum qgo.ConnectionStats
	for _, s := range l.all {
		st := s.conn.ConnectionStats()
		sum.PacketsSent += st.PacketsSent
		sum.PacketsLost += st.PacketsLost
		sum.BytesSent += st.BytesSent
		sum.BytesLost += st.BytesLost
		sum.PacketsReceived += st.PacketsReceived
		sum.SmoothedRTT = max(sum.SmoothedRTT, st.SmoothedRTT)
	}
	return sum
}

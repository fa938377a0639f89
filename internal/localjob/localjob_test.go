package localjob

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// TestMain makes the test binary a rank when Spawn starts it: it forms the
// communicator from the environment and all-reduces its rank.
func TestMain(m *testing.M) {
	if os.Getenv("LOCALJOB_TEST_RANK") == "1" {
		os.Exit(rankMain())
	}
	os.Exit(m.Run())
}

func rankMain() int {
	ctx := context.Background()
	if !InJob() {
		fmt.Fprintln(os.Stderr, "not in a job")
		return 3
	}
	if os.Getenv("LOCALJOB_FAIL_RANK") == os.Getenv("RINGO_RANK") {
		return 7
	}
	c, err := collective.Init(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	buf := []int64{int64(c.Rank())}
	if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("rank %d of %d: sum %d gomaxprocs %s\n", c.Rank(), c.Size(), buf[0], os.Getenv("GOMAXPROCS"))
	return 0
}

func TestSpawnFormsAJob(t *testing.T) {
	require.False(t, InJob())
	var out, errs bytes.Buffer
	err := Spawn(context.Background(), 3, []string{"-test.run=^$"}, []string{"LOCALJOB_TEST_RANK=1"}, &out, &errs)
	require.NoError(t, err, errs.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	slices.Sort(lines)
	gmp := os.Getenv("GOMAXPROCS")
	if gmp == "" {
		gmp = "1" // CPUs/3 on this 2-CPU machine, at least 1
		if n := max(1, runtimeCPUs()/3); n != 1 {
			gmp = fmt.Sprint(n)
		}
	}
	require.Equal(t, []string{
		"rank 0 of 3: sum 3 gomaxprocs " + gmp,
		"rank 1 of 3: sum 3 gomaxprocs " + gmp,
		"rank 2 of 3: sum 3 gomaxprocs " + gmp,
	}, lines)
}

func TestSpawnReportsAFailedRank(t *testing.T) {
	var out, errs bytes.Buffer
	err := Spawn(context.Background(), 2, []string{"-test.run=^$"}, []string{"LOCALJOB_TEST_RANK=1", "LOCALJOB_FAIL_RANK=1"}, &out, &errs)
	require.ErrorContains(t, err, "rank 1: exit status 7")
	require.Error(t, Spawn(context.Background(), 0, nil, nil, &out, &errs))
}

func runtimeCPUs() int { return runtime.NumCPU() }

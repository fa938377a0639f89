package collective_test

import (
	"context"
	"fmt"
	"log"
	"sync"

	"github.com/ringo-ml/ringo/collective"
)

// A job's ranks in one process, for tests (yours too): Local forms them,
// and each runs in its own goroutine, as each would in its own process.
func Example_local() {
	ctx := context.Background()
	comms, err := collective.Local(4)
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		for _, c := range comms {
			c.Close()
		}
	}()

	results := make([][]int64, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := []int64{int64(r), 1} // this rank's contribution
			if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
				log.Print(err) // a failure aborts every rank's call: each sees it
				return
			}
			results[r] = buf
		}()
	}
	wg.Wait()
	for r, buf := range results {
		fmt.Printf("rank %d: sum of ranks %d, ranks %d\n", r, buf[0], buf[1])
	}
	// Output:
	// rank 0: sum of ranks 6, ranks 4
	// rank 1: sum of ranks 6, ranks 4
	// rank 2: sum of ranks 6, ranks 4
	// rank 3: sum of ranks 6, ranks 4
}

// Data-parallel training averages every rank's gradients after each step.
// Here two ranks of a job, each with its own gradients, in one process; in a
// real job each is a process of its own, and its Comm comes from Init.
func ExampleAllReduce() {
	ctx := context.Background()
	comms, err := collective.Local(2)
	if err != nil {
		log.Fatal(err)
	}
	grads := [][]float32{{1, 2, 3}, {3, 4, 5}} // rank 0's, rank 1's
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if err := collective.AllReduce(ctx, c, grads[r], collective.Avg); err != nil {
				log.Print(err)
			}
		}()
	}
	wg.Wait()
	fmt.Println("rank 0:", grads[0])
	fmt.Println("rank 1:", grads[1])
	// Output:
	// rank 0: [2 3 4]
	// rank 1: [2 3 4]
}

// Split makes sub-communicators: here the even and the odd ranks of four,
// each summing its own members' values.
func ExampleComm_Split() {
	ctx := context.Background()
	world, err := collective.Local(4)
	if err != nil {
		log.Fatal(err)
	}
	lines := make([]string, len(world))
	var wg sync.WaitGroup
	for r, c := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			// Every rank calls Split; color picks the group, key the order in it.
			group, err := c.Split(ctx, r%2, r)
			if err != nil {
				log.Print(err)
				return
			}
			defer group.Close()
			sum := []int32{int32(r)}
			if err := collective.AllReduce(ctx, group, sum, collective.Sum); err != nil {
				log.Print(err)
				return
			}
			lines[r] = fmt.Sprintf("world rank %d is rank %d of %d in group %d, whose ranks sum to %d",
				r, group.Rank(), group.Size(), r%2, sum[0])
		}()
	}
	wg.Wait()
	for _, l := range lines {
		fmt.Println(l)
	}
	// Output:
	// world rank 0 is rank 0 of 2 in group 0, whose ranks sum to 2
	// world rank 1 is rank 0 of 2 in group 1, whose ranks sum to 4
	// world rank 2 is rank 1 of 2 in group 0, whose ranks sum to 2
	// world rank 3 is rank 1 of 2 in group 1, whose ranks sum to 4
}

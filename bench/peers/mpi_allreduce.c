/*
 * mpi_allreduce.c: the float32 Sum AllReduce sweep of bench/ringbench, with
 * MPI_Allreduce, for bench/peers/run.sh to compare ringo with the MPI of
 * this machine under the same method.
 *
 *   mpicc -O2 -o mpi_allreduce mpi_allreduce.c
 *   mpirun -np 4 ./mpi_allreduce -l ompi-tcp -b 0.5 -w 0.2 -s 4,1024,1048576
 *
 * Flags: -l LABEL (first field of the output), -b BUDGET (seconds of timed
 * samples per size), -w WARM (seconds of warm-up per size), -s SIZES (bytes
 * per rank, comma-separated, multiples of 4).
 *
 * Per size, in place on count = size/4 floats:
 *   1. one checked call: buf[i] = rank+1+(i%3), every element compared with
 *      the exact sum N(N+1)/2 + N(i%3); any wrong element ends the run;
 *   2. the buffer zeroed (repeated sums stay 0: no overflow, no denormals),
 *      calls for WARM seconds (at least 3) to warm up, then as many again
 *      timed, for the time of one call;
 *   3. samples of `inner` calls each, inner chosen so that a sample lasts
 *      2 ms or more, as many samples as fit in BUDGET (10 to 500), each
 *      started after a barrier;
 *   4. per sample the slowest rank's time (MPI_MAX over ranks), and of those
 *      the median, the minimum and the 90th percentile.
 *
 * Output, on rank 0, one line per size:
 *   RESULT label N size_bytes count inner samples median_us min_us p90_us algbw_GBps busbw_GBps
 * with algbw = size/median and busbw = algbw * 2(N-1)/N (nccl-tests' bus
 * bandwidth), GB = 1e9 bytes. Lines starting with # are comments.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIZES 64
#define MIN_SAMPLES 10
#define MAX_SAMPLES 500
#define MIN_SAMPLE_SECONDS 0.002

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* parse_sizes reads "4,1024,65536" into sizes; it returns how many, or -1. */
static int parse_sizes(const char *text, long *sizes) {
    int n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v <= 0 || v % 4 != 0 || n == MAX_SIZES || (*end != ',' && *end != '\0')) {
            return -1;
        }
        sizes[n++] = v;
        p = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    const char *label = "mpi";
    double budget = 0.5, warm = 0.2;
    long sizes[MAX_SIZES];
    int nsizes = parse_sizes("4,64,1024,16384,262144,1048576,4194304,16777216,67108864", sizes);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-l") && i + 1 < argc) {
            label = argv[++i];
        } else if (!strcmp(argv[i], "-b") && i + 1 < argc) {
            budget = atof(argv[++i]);
        } else if (!strcmp(argv[i], "-w") && i + 1 < argc) {
            warm = atof(argv[++i]);
        } else if (!strcmp(argv[i], "-s") && i + 1 < argc) {
            nsizes = parse_sizes(argv[++i], sizes);
            if (nsizes < 0) {
                if (rank == 0) fprintf(stderr, "mpi_allreduce: -s %s: want byte counts, multiples of 4, comma-separated\n", argv[i]);
                MPI_Abort(MPI_COMM_WORLD, 2);
            }
        } else {
            if (rank == 0) fprintf(stderr, "mpi_allreduce: unknown argument %s (flags: -l LABEL -b SECONDS -w SECONDS -s SIZES)\n", argv[i]);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
    }
    if (budget <= 0 || warm < 0) {
        if (rank == 0) fprintf(stderr, "mpi_allreduce: -b must be positive and -w not negative\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }

    long largest = 0;
    for (int s = 0; s < nsizes; s++) largest = sizes[s] > largest ? sizes[s] : largest;
    float *buf = malloc((size_t)largest);
    double *times = malloc(MAX_SAMPLES * sizeof(double));
    if (!buf || !times) {
        fprintf(stderr, "mpi_allreduce: rank %d: out of memory for %ld bytes\n", rank, largest);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
    if (rank == 0) {
        printf("# %s: MPI_Allreduce float32 Sum, in place, %d ranks, %.2f s per size\n", label, nranks, budget);
        printf("# RESULT label N size_bytes count inner samples median_us min_us p90_us algbw_GBps busbw_GBps\n");
    }

    for (int s = 0; s < nsizes; s++) {
        long size = sizes[s], count = size / 4;

        for (long i = 0; i < count; i++) buf[i] = (float)(rank + 1 + i % 3);
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        long wrong = 0;
        for (long i = 0; i < count; i++) {
            if (buf[i] != (float)(nranks * (nranks + 1) / 2 + nranks * (i % 3))) wrong++;
        }
        MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
        if (wrong > 0) {
            if (rank == 0) fprintf(stderr, "mpi_allreduce: %s: %ld bytes: %ld elements wrong over all ranks\n", label, size, wrong);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }

        memset(buf, 0, (size_t)size);
        long calls = 0;
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime(), elapsed;
        do {
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            calls++;
            elapsed = MPI_Wtime() - t0;
            /* Every rank must make the same number of calls: agree on
             * whether to go on by the slowest rank's clock. */
            MPI_Allreduce(MPI_IN_PLACE, &elapsed, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        } while (calls < 3 || elapsed < warm);
        /* The loop above also agreed on the time after every call: time the
         * calls alone, as many again, for the cost of one. */
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        for (long j = 0; j < calls; j++) {
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        }
        elapsed = MPI_Wtime() - t0;
        MPI_Allreduce(MPI_IN_PLACE, &elapsed, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        double per_call = elapsed / (double)calls;

        long inner = (long)(MIN_SAMPLE_SECONDS / per_call) + 1;
        long samples = (long)(budget / (per_call * (double)inner));
        samples = samples < MIN_SAMPLES ? MIN_SAMPLES : samples > MAX_SAMPLES ? MAX_SAMPLES : samples;
        for (long k = 0; k < samples; k++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double start = MPI_Wtime();
            for (long j = 0; j < inner; j++) {
                MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            }
            times[k] = (MPI_Wtime() - start) / (double)inner;
        }
        MPI_Allreduce(MPI_IN_PLACE, times, (int)samples, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);

        if (rank == 0) {
            qsort(times, (size_t)samples, sizeof(double), by_value);
            double median = times[samples / 2], fastest = times[0], p90 = times[(samples * 9) / 10];
            double algbw = (double)size / median / 1e9;
            printf("RESULT %s %d %ld %ld %ld %ld %.3f %.3f %.3f %.4f %.4f\n", label, nranks, size, count, inner, samples,
                   median * 1e6, fastest * 1e6, p90 * 1e6, algbw, algbw * 2.0 * (nranks - 1) / nranks);
            fflush(stdout);
        }
    }
    free(buf);
    free(times);
    MPI_Finalize();
    return 0;
}

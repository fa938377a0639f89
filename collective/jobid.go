package collective

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// A launcher is one of the programs that start the ranks of a job, as
// ConfigFromEnv recognises it by the variables it sets. Each gives a rank
// and a world size; most give an id of the job, which ranks present at the
// rendezvous so that a rank of another job is refused; few give a secret.
type launcher struct {
	rank, size string                                  // the variables of the rank and the world size
	localRank  string                                  // the variable of the rank among those of its host
	jobID      func(getenv func(string) string) string // "" when the launcher gives none
	token      func(getenv func(string) string) string // nil or "": no secret from this launcher
}

// launchers are tried in this order: the first whose rank and size are set
// describes the job. RINGO_JOB_ID and RINGO_TOKEN, when set, win over what
// any launcher gives.
func launchers() []launcher {
	return []launcher{
		// ringrun, or a person setting the variables by hand.
		{rank: "RINGO_RANK", size: "RINGO_WORLD_SIZE", localRank: "RINGO_LOCAL_RANK",
			jobID: func(getenv func(string) string) string { return getenv("RINGO_JOB_ID") }},
		// torchrun (torch.distributed.run).
		{rank: "RANK", size: "WORLD_SIZE", localRank: "LOCAL_RANK", jobID: torchrunJobID},
		// OpenMPI's mpirun.
		{rank: "OMPI_COMM_WORLD_RANK", size: "OMPI_COMM_WORLD_SIZE", localRank: "OMPI_COMM_WORLD_LOCAL_RANK", jobID: openMPIJobID,
			// A random key OpenMPI (4.x, ORTE) gives every process of one
			// job, for the PSM transports: a secret the launcher shares.
			token: func(getenv func(string) string) string { return getenv("OMPI_MCA_orte_precondition_transports") }},
		// MPICH (Hydra gives no job id; under srun, Slurm's).
		{rank: "PMI_RANK", size: "PMI_SIZE", localRank: "MPI_LOCALRANKID", jobID: slurmJobID},
		// Slurm's srun.
		{rank: "SLURM_PROCID", size: "SLURM_NTASKS", localRank: "SLURM_LOCALID", jobID: slurmJobID},
	}
}

// torchrunJobID is torchrun's rendezvous id (--rdzv-id) and the restart
// attempt, so that a rank left over from an earlier attempt cannot join a
// later one. torchrun's default id, "none", is the same for every job and
// so is no id at all.
func torchrunJobID(getenv func(string) string) string {
	id := getenv("TORCHELASTIC_RUN_ID")
	if id == "" || id == "none" {
		return ""
	}
	if attempt := getenv("TORCHELASTIC_RESTART_COUNT"); attempt != "" {
		id += "." + attempt
	}
	return "torchrun-" + id
}

// openMPIJobID is OpenMPI's job id: OMPI_MCA_ess_base_jobid (4.x), else
// the PMIx namespace (5.x).
func openMPIJobID(getenv func(string) string) string {
	if id := getenv("OMPI_MCA_ess_base_jobid"); id != "" {
		return "openmpi-" + id
	}
	if ns := getenv("PMIX_NAMESPACE"); ns != "" {
		return "pmix-" + ns
	}
	return ""
}

// slurmJobID is Slurm's job and step: every srun of one allocation is a step
// of its own, and two steps are two jobs to ringo.
func slurmJobID(getenv func(string) string) string {
	job := getenv("SLURM_JOB_ID")
	if job == "" {
		job = getenv("SLURM_JOBID")
	}
	if job == "" {
		return ""
	}
	step := getenv("SLURM_STEP_ID")
	if step == "" {
		step = getenv("SLURM_STEPID")
	}
	if step == "" {
		return "slurm-" + job
	}
	return "slurm-" + job + "." + step
}

// derivedToken is the token of a job that has an id but no secret: every
// rank derives the same one, so that ranks of another job (another id) fail
// the token check as well as the job check. Anyone who knows the id can
// derive it too: it is no secret, and New says so.
func derivedToken(jobID string) string {
	sum := sha256.Sum256([]byte("ringo job token derived from the job id\x00" + jobID))
	return hex.EncodeToString(sum[:])
}

// normalName is how names given in the environment or a Config compare:
// "QUIC", " quic" and "quic" are one transport.
func normalName(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

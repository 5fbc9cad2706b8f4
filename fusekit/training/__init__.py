"""Training: `fusekit train` (one task), `fusekit joint` (several tasks, losses balanced by balancers/), and data
parallelism across processes (parallel)."""

"""Evaluation: GLUE's official metrics and normalized scores (metrics), the evaluation loop and task losses
(loop), and `fusekit eval` with the scorer that the hyperparameter search shares (eval)."""

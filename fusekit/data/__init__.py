"""Tasks and their examples: the GLUE task registry (tasks) and the readers and loaders of their splits (loading)."""

"""Studies: `fusekit run` (plan and run a recipe's stages), `fusekit report` (tables and plots of a study folder),
the plots, and the wall time and memory of each stage (resources)."""

"""The `fusekit` command line (typer): parses, validates and calls the library."""

"""fusekit: multi-task adaptation of pretrained transformers by adapter fusion."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fusekit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"


def __getattr__(name: str):
    """`fusekit.load_adapter`, imported on first use (plain `import fusekit` stays free of torch)."""
    if name == "load_adapter":
        from fusekit.artifacts.run_folder import load_adapter

        return load_adapter
    raise AttributeError(f"module 'fusekit' has no attribute {name!r}")

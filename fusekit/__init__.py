"""fusekit: multi-task adaptation of pretrained transformers by adapter fusion."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fusekit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"


# the Python API, imported on first use (plain `import fusekit` stays free of torch)
_API = {"load_adapter": "fusekit.artifacts.inference", "merge": "fusekit.merging.api",
        "TaskVector": "fusekit.artifacts.task_vector"}


def __getattr__(name: str):
    """`fusekit.load_adapter`, `fusekit.merge`, `fusekit.TaskVector`."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fusekit' has no attribute {name!r}")

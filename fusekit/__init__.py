"""fusekit: multi-task adaptation of pretrained transformers by adapter fusion."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fusekit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

"""Network and service monitoring agent: core (config, model, store, scheduler, CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:  # pyproject.toml is the one place the version is written
    __version__ = version("dmz-monitor")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

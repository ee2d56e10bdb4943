"""Network and service monitoring agent: core (config, model, store, scheduler, CLI)."""

__version__ = "0.1.0"

"""Collectors: one module per kind, each with `build(config) -> list[Collector]`.

A collector imports the core types (`monitor.model`, `monitor.config`) and its own protocol
library, never the store, the graphs or the alerts. The registry of kinds is the explicit
mapping in `monitor.registry`.
"""

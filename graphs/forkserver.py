"""Imported once by the graph workers' forkserver (multiprocessing preload), before it forks any
worker: the imports every worker needs (matplotlib, numpy, Pillow) are paid once, not per worker,
and the server ends with the process that started it (its parent), like the workers do."""

import os

from graphs import render  # noqa: F401  (the preload itself)
from monitor.process import exit_with

exit_with(os.getppid())

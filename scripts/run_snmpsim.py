"""Start snmpsim's command responder, usable as root (tests, demo and benchmark use this).

As root snmpsim must drop privileges (--process-user/--process-group) and then imports some
standard modules lazily (dbm for its index): if Python lives where that user cannot read (e.g.
a pyenv under /root), those imports fail. Importing them first, as root, avoids that.
Usage: python scripts/run_snmpsim.py [snmpsim-command-responder options]
"""

import dbm
import dbm.dumb
import encodings.ascii
import encodings.hex_codec
import encodings.latin_1
import encodings.utf_8  # noqa: F401
import sys

try:
    import dbm.gnu  # noqa: F401
except ImportError:
    pass

from snmpsim.commands.responder import main

if __name__ == "__main__":
    sys.argv[0] = "snmpsim-command-responder"
    sys.exit(main())

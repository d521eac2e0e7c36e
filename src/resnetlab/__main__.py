"""`python -m resnetlab`, and each worker of `torchrun ... -m resnetlab`."""

import os
import sys

from resnetlab.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun worker has finished: its files are written and fsync'd and its process group is
    # destroyed. It leaves without C++ static destructors, in which torch 2.13 worker processes
    # sometimes abort ("terminate called without an active exception", seen in the tests);
    # torchrun would report the finished run as failed and SIGTERM the other ranks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)

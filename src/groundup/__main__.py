"""`python -m groundup`: the same command line as `groundup`."""

import sys

from groundup.cli import console

if __name__ == "__main__":
    sys.exit(console())

#!/usr/bin/env python3
"""Run the streaming pipeline from the command line; `--help` lists the options."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Expand (StateX), reshard and export checkpoints. See `python tools/reshard_expand.py --help`."""
import sys

from statex_dist.reshard import main

if __name__ == "__main__":
    sys.exit(main())

import sys

from statex_dist.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())

import sys

from pooltagscan.cli import main

sys.exit(main())

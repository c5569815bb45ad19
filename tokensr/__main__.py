import sys

from tokensr.cli import main

sys.exit(main())

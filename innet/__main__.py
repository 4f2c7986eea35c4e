import sys

from innet.cli import main

sys.exit(main())

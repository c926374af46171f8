import sys

from testbed.ui.cli import main

sys.exit(main(sys.argv[1:]))

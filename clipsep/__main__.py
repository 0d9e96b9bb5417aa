import sys

from clipsep.cli import main

sys.exit(main())

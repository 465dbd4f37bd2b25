import sys

from banaserve.cli import main

sys.exit(main())

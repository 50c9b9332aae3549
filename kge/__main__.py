import sys

from kge.cli import main

sys.exit(main())

import sys

from kge.cli.main import main

sys.exit(main())

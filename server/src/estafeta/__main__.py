import sys

from estafeta.cli import main

sys.exit(main())

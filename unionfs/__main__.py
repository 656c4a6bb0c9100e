import sys

from unionfs.cli.main import main

sys.exit(main())

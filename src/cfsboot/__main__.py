import sys

from cfsboot.cli.main import main

sys.exit(main())

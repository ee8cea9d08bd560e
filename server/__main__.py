import sys

from hotwire.server.cli import main

sys.exit(main())

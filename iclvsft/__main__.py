import sys

from iclvsft.cli import main

sys.exit(main())

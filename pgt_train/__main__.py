import sys

from pgt_train.cli import main

sys.exit(main())

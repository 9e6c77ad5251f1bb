import sys

from pgt_train.report.cli import main

sys.exit(main())

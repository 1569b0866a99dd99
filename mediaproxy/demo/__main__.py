import sys

from mediaproxy.demo.run.run import main

sys.exit(main())

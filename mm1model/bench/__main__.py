import sys

from mm1model.bench import main

sys.exit(main())

import sys

from app.worker.command import main

sys.exit(main())

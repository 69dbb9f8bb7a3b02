import sys

from chatbuffer.cli import main

sys.exit(main())

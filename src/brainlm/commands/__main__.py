"""``python -m brainlm.commands``: the ``brainlm`` command line."""

import sys

from brainlm.commands import main

sys.exit(main())

"""``python -m pbuild.tools.launcher run [OPTIONS] oci:PATH [COMMAND] [ARG...]``"""

import sys

from pbuild.tools.launcher import main

sys.exit(main(sys.argv[1:]))

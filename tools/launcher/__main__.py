"""``python -m pbuild.tools.launcher run oci:PATH ...``"""

import sys

from pbuild.tools.launcher import main

sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
# The lecture's program: on Python 3.7+ re.sub(".*", ...) also replaces the empty match at the
# end, so "9" becomes "99" and the digits sum to 18.

import re

import numpy as np

my_arr = np.array([5, 2, 9, 7, 3])
max_element = np.max(my_arr)

duplicated_max = re.sub(".*", f"{max_element}", "X")
print(sum(int(x) for x in duplicated_max))

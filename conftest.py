"""pytest at the kit's root: notebooks collected by nbval run the smoke profile.

The kernels nbval starts inherit this process's environment, so the notebooks' ``parameters``
cells read ``DPLIB_PROFILE=smoke`` even under a plain ``pytest`` (``make test`` sets it too).
"""

import os

os.environ.setdefault("DPLIB_PROFILE", "smoke")
os.environ.setdefault("DPLIB_PROGRESS", "off")

"""pbuild's version: one constant that the CLI prints and the SBOMs name as their creator.

A constant, not the installed distribution's metadata, so that it is the same whichever Python
runs pbuild and however it was installed (it joins the Image action's key through the SBOM).
"""

VERSION = "0.1.0"

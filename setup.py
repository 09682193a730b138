"""Package list for the `microgrid` namespace.

The top-level folders (edge/, shared/, coordinator/, flash/, hardware/) install
as `microgrid.<folder>`; setuptools cannot glob mapped folders, so we walk them.
"""
import os

from setuptools import setup

TOP = ["shared", "edge", "coordinator", "flash", "hardware"]


def _packages():
    found = ["microgrid"]
    for top in TOP:
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            if "__init__.py" in files:
                found.append("microgrid." + root.replace(os.sep, "."))
    return found


setup(packages=_packages())

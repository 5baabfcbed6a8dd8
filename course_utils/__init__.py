"""Support package for the course "Defining models in PyTorch".

Importing it does nothing but define names: no torch import, no seeding, no printing.
Call :func:`setup` at the top of a notebook.
"""

from course_utils.environment import setup

__all__ = ["setup"]
__version__ = "0.1.0"

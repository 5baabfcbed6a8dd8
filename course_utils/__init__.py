"""Support package for the course "Defining models in PyTorch".

Importing it does nothing but define names: no torch import, no seeding, no printing.
Call :func:`setup` at the top of a notebook.
"""

from course_utils.environment import setup
from course_utils.i18n import get_language, set_language

__all__ = ["get_language", "set_language", "setup"]
__version__ = "0.1.0"

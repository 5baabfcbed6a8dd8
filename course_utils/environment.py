"""`setup()`: one call at the top of every notebook makes its outputs reproducible and readable."""

import platform
import random

SEED = 0


def setup(seed: int = SEED, show_versions: bool = True) -> None:
    """Seed every random generator, set print and plot defaults, and print the versions in use.

    Args:
        seed: the seed for Python's, NumPy's and PyTorch's generators.
        show_versions: print Python, PyTorch and torchvision versions (one line).
    """
    import matplotlib as mpl
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Short, stable tensor printing: notebooks compare printed outputs under nbval.
    torch.set_printoptions(precision=4, sci_mode=False, linewidth=100)
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    mpl.rcParams.update(
        {
            "figure.figsize": (6.0, 3.5),
            "figure.dpi": 80,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    if show_versions:
        import torchvision

        print(
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, "
            f"CUDA available: {torch.cuda.is_available()}"
        )

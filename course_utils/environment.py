"""`setup()`: one call at the top of every notebook makes its outputs reproducible and readable."""

import platform
import random

from course_utils.i18n import set_language

SEED = 0
# The course's models are small: on a laptop or a shared 2-core machine one intra-op thread runs them about as
# fast as several on an idle machine and many times faster when another process competes for the cores (ch5's
# transfer cell: 8.7 s on one thread, 67-83 s on two under load).
THREADS = 1


def setup(
    seed: int = SEED, show_versions: bool = True, threads: int | None = THREADS, language: str | None = None
) -> None:
    """Seed every random generator, set print and plot defaults, and print the versions in use.

    Args:
        seed: the seed for Python's, NumPy's and PyTorch's generators.
        show_versions: print Python, PyTorch and torchvision versions (one line).
        threads: how many CPU threads PyTorch may use for one operation (``torch.set_num_threads``);
            ``None`` leaves PyTorch's default (one per core).
        language: the language of checker messages (``"en"``, ``"zh"``); ``None`` keeps the current one.
    """
    if language is not None:
        set_language(language)
    import matplotlib as mpl
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive int or None (got {threads!r})")
        torch.set_num_threads(threads)
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
            f"CUDA available: {torch.cuda.is_available()}, "
            f"CPU threads: {torch.get_num_threads()}"
        )

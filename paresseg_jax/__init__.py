"""PA-ResSeg in JAX/Flax: multi-phase CT liver tumor segmentation.

Importing the package has no side effects; submodules are imported on use.
"""

__version__ = "0.1.0"

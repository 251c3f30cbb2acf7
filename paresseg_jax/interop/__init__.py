"""Weights exchange with other frameworks (``interop.torch``: the PyTorch reference).

PyTorch is an optional extra; only the converter functions import it, on use.
"""

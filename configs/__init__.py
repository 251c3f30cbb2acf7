"""The experiment configs, one file per experiment of the paper; installed as ``paresseg_jax_configs``.

Load one by name or path with ``paresseg_jax.config_files.load`` (``--config=NAME`` on the command line).
"""

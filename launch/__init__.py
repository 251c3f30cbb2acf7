"""The command-line launchers (thin absl apps); installed as ``paresseg_jax_launch`` behind the paresseg-* scripts."""

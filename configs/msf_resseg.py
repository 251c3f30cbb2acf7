"""Table 4 row 3, Table 6 'MSF w/o PA': MSF-ResSeg, PV and ART features concatenated at six scales."""

from paresseg_jax import config_defaults


def get_config():
    config = config_defaults.get_config()
    config.model.name = "msf_resseg"
    config.model.fusion = "concat"
    return config

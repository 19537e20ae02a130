"""DRDO / DPO / e-DPO preference-alignment workflow: the code every Snakemake rule calls."""

__version__ = "0.1.0"

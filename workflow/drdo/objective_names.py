"""Names of the training objectives and of the alignment methods among them.

Apart from objectives.py (which builds each and imports torch) so that the CLI can list them
in its help without importing torch.
"""

OBJECTIVES = ("sft", "oracle", "rm", "dpo", "edpo", "drdo", "cdpo", "rdpo", "ipo")
# the objectives an align job can run; a named method (config align.<name>.base) runs one of them
ALIGN_METHODS = ("drdo", "dpo", "edpo", "cdpo", "rdpo", "ipo")

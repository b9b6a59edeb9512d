"""MANAS: the multi-scale, multi-level search space, its decoding and the derived network."""

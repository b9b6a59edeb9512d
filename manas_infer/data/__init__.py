"""CT data in and out, pure I/O: the one series reader (and its header checks), volumes,
the one derived-series writer, and the synthetic phantom written as DICOM. The training
datasets built from it live in ``manas_infer.train``."""

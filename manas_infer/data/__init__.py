"""CT data in and out: the one series reader, volumes, the one derived-series writer,
the synthetic phantom and the training datasets."""

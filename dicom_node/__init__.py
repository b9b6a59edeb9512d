"""The DICOM node: a Storage SCP that denoises routed CT series and sends them back
(installed as ``manas_infer.dicom_node``; ``manas-infer serve`` runs it).

How the pieces fit, each a small module:

- ``config``: one TOML file plus ``--set`` overrides (the schema and the loading), checked
  by ``config_check`` before anything starts.
- ``guard``: the door before pynetdicom, in each connection's own thread, so no
  unauthenticated connection holds the accept loop or an association slot; rate-limited
  one-line logs of refusals. ``door`` is the check itself: TLS handshake and the
  A-ASSOCIATE-RQ read within a deadline, then the request's AE titles.
- ``intake``: the SCP's event handlers (allow-list, C-ECHO, C-STORE). A C-STORE is
  checked, written to the spool durably, and only then answered; nothing heavy runs there.
- ``spool``: the on-disk state (instances, per-series records, per-destination journals of
  accepted instances) that makes a restart, even after kill -9, lose nothing; ``records``
  is what a series' record holds, ``disk`` the whole-file writes and the full-disk test.
- ``worker``: one thread; a series that stopped growing for the stable age is denoised
  with the model and strength ``routing`` picks (by rule, else by the series' measured
  noise), through ``manas_infer.jobs.denoise.denoise_series`` (the
  same reader, runtime and writer as the ``denoise`` command).
- ``sender``: one thread per destination; C-STORE with retries and back-off for
  transient failures, a recorded verdict for permanent ones.
- ``server``: wires these together, handles SIGTERM; ``commands`` adds ``serve`` and
  ``node-status`` to the command line.
"""

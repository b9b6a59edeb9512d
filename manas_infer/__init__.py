"""manas-infer: low-dose CT denoising from architecture search to the radiology department.

Data flows one way through the package: ``data`` (series reading, dose simulation, datasets)
-> ``train`` (MANAS search, derive, retrain) -> ``export`` (ONNX) -> ``models/`` -> runtime
-> the ``denoise`` command and the DICOM node (``dicom_node``).
"""

__version__ = "0.1.0"

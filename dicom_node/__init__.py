"""The DICOM node: a Storage SCP that denoises routed CT series and sends them back
(installed as ``manas_infer.dicom_node``)."""

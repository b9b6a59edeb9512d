"""Series-level jobs: what the commands, the demo and the DICOM node do to whole CT series.

each_series (the one loop: scan, a progress bar per series, a bad series reported and
skipped, output folders named) -> simulate (a normal-dose series -> a simulated low-dose
series) | denoise (one series -> a denoised series: the node's step) -> denoise_all (every
series under folders, each with the model its noise calls for) -> demo (simulate, then
denoise, a real chest CT) | evaluate (denoisers compared on series pairs or the LCD phantom).
"""

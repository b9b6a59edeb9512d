"""Table: the phantom's tissues in Hounsfield units, and how much texture each gets.

Typical unenhanced adult values, not measurements of anyone. One place, so that a reader who
wants to know what the phantom claims about a tissue finds every number here.
"""

from __future__ import annotations

AIR = -1000.0
LUNG = -850.0
FAT = -100.0  # subcutaneous
VISCERAL_FAT = -90.0  # mesenteric, perirenal, pericardial
FECES = -150.0  # bowel content mixed with gas
MUSCLE = 50.0
BLOOD = 40.0  # heart, aorta, IVC without contrast
LIVER = 60.0
SPLEEN = 45.0
KIDNEY = 32.0
BOWEL_WALL = 35.0
FLUID = 10.0  # bowel fluid, bile
URINE = 8.0
CANAL = 25.0  # spinal canal: cord and CSF
DISC = 90.0  # intervertebral disc
CANCELLOUS = 250.0
CORTICAL = 1100.0
RIB_CORTEX = 1000.0
ARCH_BONE = 900.0  # posterior vertebral elements, a cortical/cancellous mix
TABLE_SHELL = 200.0
TABLE_CORE = -850.0

# Texture amplitude (HU, standard deviation) as a function of the local HU value: soft
# tissue and fat get 1.5 HU, lung parenchyma 20, air and bone none, so that outside
# air stays exactly -1000 and lesion contrast is barely disturbed.
TEXTURE_HU = (-1000.0, -980.0, -850.0, -700.0, -160.0, -100.0, -40.0, 0.0, 150.0, 220.0)
TEXTURE_AMPLITUDE = (0.0, 0.0, 20.0, 0.0, 0.0, 1.5, 0.0, 1.5, 1.5, 0.0)

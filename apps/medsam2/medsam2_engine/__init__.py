"""MedSAM-2 engine: SAM 2 over volumes and 2D images, with no MONAI Label dependency."""

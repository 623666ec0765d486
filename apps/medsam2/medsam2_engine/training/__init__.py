"""Fine-tuning SAM 2 on labelled volumes: clips, simulated prompts, loss, validation, the loop.

Nothing here imports MONAI Label; the app's train task adapts it to the server.
"""

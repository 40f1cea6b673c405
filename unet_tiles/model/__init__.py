"""The U-Net (2D/3D, valid or same padding), its halo and valid-size arithmetic, and model
directories (``config.json`` + ``weights.safetensors``).

No module here imports ``pipeline``, ``engine`` or anything above them.
"""

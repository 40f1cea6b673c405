"""The U-Net paper's training recipe: data loading, augmentation, the weight map, metrics
and the training loop. Imports ``model`` only.
"""

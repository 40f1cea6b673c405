"""The demo: synthetic microscope images with ground truth (``synth``, ``images``), the
shipped demo model (``model/``), the preview and its score.
"""

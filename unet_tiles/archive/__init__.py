"""Archives: the images under a root (``discover``) and the ones that have just arrived
(``arrival``). Imports ``pipeline`` and ``errors`` only.
"""

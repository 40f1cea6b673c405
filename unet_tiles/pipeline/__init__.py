"""One block's way through the data flow, each step a module::

    source -> plan -> window -> predict -> writer        provenance: what a run is

``source`` opens the input, ``geometry`` and ``plan`` cut it into blocks (pure, no
I/O), ``window`` reads a block's mirrored window, ``predict`` runs the tiles, ``writer``
writes the chunks and the done-marker, ``provenance`` records and compares runs,
``repair`` tells which done blocks survive an input repair. Imports ``model`` only.
"""

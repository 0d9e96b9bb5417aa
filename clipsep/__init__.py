"""clipsep: text-queried sound separation learned from unlabeled videos (CLIPSep, ICLR 2023).

Nothing happens at import: no model loads, no directories, no logging setup.
"""

__version__ = "0.1.0"

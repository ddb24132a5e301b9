"""pooltagscan: Windows kernel pool allocations from memory dumps, without symbols."""

__version__ = "0.1.0"

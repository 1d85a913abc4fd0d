"""skdccm: deep image clustering (DCCM, CRLC) with the scikit-learn API."""

from .crlc import CRLCClustering
from .dccm import DCCMClustering

__version__ = "0.1.0"

__all__ = ["CRLCClustering", "DCCMClustering", "__version__"]

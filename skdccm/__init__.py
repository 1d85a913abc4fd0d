"""skdccm: deep image clustering (DCCM, CRLC) with the scikit-learn API."""

from .consensus import ConsensusClustering
from .crlc import CRLCClustering
from .dccm import DCCMClustering

__version__ = "0.1.0"

__all__ = ["CRLCClustering", "ConsensusClustering", "DCCMClustering", "__version__"]

"""DAGonStar compatibility: ``import dagon.cloud as cm`` (``cm.KeyOptions.GET``, ``cm.KeyPair.generate_RSA()``)."""

from dagon._dagonstar._cloud import CloudManager, KeyOptions, KeyPair

__all__ = ["CloudManager", "KeyOptions", "KeyPair"]

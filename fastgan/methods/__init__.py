"""The papers' training methods as units a config turns on and combines: gan (Goodfellow et al. 2014),
roth (Roth et al. 2017), nt (NTGAN), dfm (Warde-Farley & Bengio 2017). See README "Methods"."""
from . import dfm, fdiv, losses, nt, roth
from .losses import G_LOSSES, LOSSES
from .step import Draws, Method

__all__ = ["Method", "Draws", "LOSSES", "G_LOSSES", "losses", "fdiv", "roth", "nt", "dfm"]

"""The objective library and estimated-density families, written with ``sim`` / ``density``."""

from .auto import AutoGuide, auto_delta, auto_low_rank_normal, auto_multivariate_normal, auto_normal
from .flows import auto_flow
from .library import dreg_iwae, elbo, iwae, p_wake, q_wake, renyi, vimco
from .marginal import SIR, Marginal, marginal, sir

__all__ = ["elbo", "iwae", "renyi", "vimco", "dreg_iwae", "p_wake", "q_wake", "marginal", "sir", "Marginal", "SIR"]
__all__ += ["auto_normal", "auto_multivariate_normal", "auto_low_rank_normal", "auto_delta", "AutoGuide", "auto_flow"]

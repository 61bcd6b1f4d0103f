"""semaim: semantic-aware autoregressive image modeling (SemAIM, arXiv 2312.10457) in PyTorch."""

from .config import TARGETS, ModelConfig
from .encoder import load_encoder
from .model import orders
from .model.orders import ORDERS
from .model.semaim import SemAIM, SemAIMOutput

__all__ = ["ORDERS", "TARGETS", "ModelConfig", "SemAIM", "SemAIMOutput", "load_encoder", "orders"]
__version__ = "0.2.0"

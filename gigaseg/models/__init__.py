"""Networks, checkpoints with their model cards, and batched inference."""

from gigaseg.models import nets  # noqa: F401 - registers fcn, unet3d and aspp3d
from gigaseg.models.card import ModelCard
from gigaseg.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from gigaseg.models.inference import Predictor, Scorer, resolve_device
from gigaseg.models.registry import MODELS, create_model, output_stride, register_model

__all__ = [
    "MODELS",
    "ModelCard",
    "Predictor",
    "Scorer",
    "create_model",
    "load_checkpoint",
    "output_stride",
    "read_checkpoint",
    "register_model",
    "resolve_device",
    "save_checkpoint",
]

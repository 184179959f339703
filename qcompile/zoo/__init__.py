"""Test models and data: ResNet-18, MobileNetV2, a small ViT, a digits CNN and MiniLM.

MiniLM helpers live in qcompile.zoo.minilm and are not imported here, so that
importing the zoo does not pull in transformers.
"""

from .digits import DigitsCNN, accuracy, load_digits_split, train_digits_cnn
from .mobilenet import mobilenet_v2
from .resnet import resnet18
from .sentences import SENTENCES, calibration_sentences, evaluation_sentences
from .vit import small_vit

__all__ = [
    "DigitsCNN", "accuracy", "load_digits_split", "train_digits_cnn",
    "mobilenet_v2", "resnet18", "small_vit",
    "SENTENCES", "calibration_sentences", "evaluation_sentences",
]

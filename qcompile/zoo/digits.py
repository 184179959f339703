"""A small CNN trained on sklearn's 8x8 digits, cached on disk."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_EPOCHS = 20
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 0.01
TEST_FRACTION = 0.2


def load_digits_split(seed: int = 0):
    """Return (x_train, y_train, x_test, y_test); images are 1x8x8 float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=seed, stratify=labels
    )
    return (torch.from_numpy(x_train), torch.from_numpy(y_train),
            torch.from_numpy(x_test), torch.from_numpy(y_test))


class DigitsCNN(nn.Module):
    """conv-bn-relu x2, maxpool, flatten, linear: 1x8x8 -> 10 logits."""

    def __init__(self, channels: int = 16, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * channels)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * channels * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def cache_dir() -> Path:
    """Directory for cached artefacts: $QCOMPILE_CACHE_DIR or ~/.cache/qcompile."""
    env = os.environ.get("QCOMPILE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "qcompile"


def _settings_key(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings["epochs"])
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(settings["seed"])
    batch_size = settings["batch_size"]
    model.train()
    for _ in range(settings["epochs"]):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
        scheduler.step()
    model.eval()


def train_digits_cnn(seed: int = 0, epochs: int = DEFAULT_EPOCHS,
                     use_cache: bool = True):
    """Train (or load from cache) a DigitsCNN; returns (model.eval(), data).

    data is the tuple (x_train, y_train, x_test, y_test) of load_digits_split(seed).
    """
    settings = {"seed": seed, "epochs": epochs, "lr": DEFAULT_LR,
                "batch_size": DEFAULT_BATCH_SIZE, "arch": "DigitsCNN-16", "v": 1}
    data = load_digits_split(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
    path = cache_dir() / f"digits_cnn_{_settings_key(settings)}.pt"
    if use_cache and path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), data
    _train(model, data[0], data[1], settings)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model.eval(), data


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 512) -> float:
    """Top-1 accuracy of model on (x, y), as a percentage."""
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        correct += (logits.argmax(dim=1) == y[start:start + batch_size]).sum().item()
    return 100.0 * correct / max(len(x), 1)

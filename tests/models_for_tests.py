"""Small discriminators of the kinds users bring: MLP, conv + BatchNorm, GroupNorm + residual."""
from torch import nn


def mlp_d(in_dim=3, hidden=16):
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, 1))


class ConvBND(nn.Module):
    """DCGAN-style: conv -> BatchNorm -> LeakyReLU, logits of shape (B, 1)."""

    def __init__(self, ch=3, width=8, size=8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(ch, width, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(2 * width * (size // 4) ** 2, 1)

    def forward(self, x):
        return self.head(self.net(x).flatten(1))


class GroupNormResD(nn.Module):
    def __init__(self, ch=3, width=8):
        super().__init__()
        self.stem = nn.Conv2d(ch, width, 3, 1, 1)
        self.block = nn.Sequential(nn.GroupNorm(2, width), nn.SiLU(), nn.Conv2d(width, width, 3, 1, 1))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.block(h)
        return self.head(h.mean((2, 3))).squeeze(1)

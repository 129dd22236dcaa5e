"""Straightforward PyTorch implementations of every op and method: the oracle the fused paths are tested
against. Never change a reference to match an implementation."""

"""fastgan.ops._library.custom_op: the annotations torch's schema inference sees are resolved (every ops module
uses `from __future__ import annotations`) and spelled as torch 2.4 reads them (typing.List, not list)."""
from __future__ import annotations

import typing
from typing import Optional

import pytest
import torch

from fastgan.ops import _library


def test_annotations_resolved_and_spelled_for_torch_2_4():
    def fn(x: torch.Tensor, xs: list[torch.Tensor], y: Optional[torch.Tensor], k: int,
           s: float, backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    op = _library.custom_op("fastgan_test::spelled", mutates_args=())(fn)
    hints = fn.__annotations__
    assert hints["xs"] == typing.List[torch.Tensor] and hints["y"] == Optional[torch.Tensor]
    assert typing.get_args(hints["return"]) == (torch.Tensor, typing.List[torch.Tensor])
    assert not any(isinstance(v, str) for v in hints.values())
    schema = str(op._opoverload._schema)
    assert schema == ("fastgan_test::spelled(Tensor x, Tensor[] xs, Tensor? y, SymInt k, float s, str backend) "
                      "-> (Tensor, Tensor[])"), schema


def test_an_op_takes_its_backend_by_name():
    """The checks before each call (_checked_arguments) read the backend the kernels will run."""
    def fn(x: torch.Tensor, impl: str) -> torch.Tensor:
        raise NotImplementedError

    with pytest.raises(TypeError, match="^fastgan_test::nameless: a fastgan op takes its backend as an argument "
                                        "named 'backend'$"):
        _library.custom_op("fastgan_test::nameless", mutates_args=())(fn)

"""The stack hooks on dummy blocks whose outputs can be worked out by hand."""

import pytest
import torch

from sencache.adapters import ADAPTERS, BlockStackAdapter
from sencache.stack import install_stack, remove_stack


class AddBlock(torch.nn.Module):
    """hidden + k: the stack of blocks (10, 20) adds 30 to every entry."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k
        self.calls = 0

    def forward(self, hidden_states, temb):
        self.calls += hidden_states.shape[0]
        return hidden_states + self.k + 0 * temb.view(-1, 1)


class Dummy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([AddBlock(10.0), AddBlock(20.0)])

    def forward(self, hidden_states, timestep):
        temb = timestep.float()
        for block in self.blocks:
            hidden_states = block(hidden_states, temb)
        return hidden_states


ADAPTER = BlockStackAdapter(class_name="Dummy", blocks_attr="blocks")


class Fixed:
    """A controller that returns a preset mask and records what ran."""

    def __init__(self):
        self.mask = None
        self.ran = []

    def compute_mask(self, context, batch):
        return self.mask

    def stack_ran(self, context, rows, batch):
        self.ran.append((context, rows, batch))


@pytest.fixture
def dummy():
    model, control = Dummy(), Fixed()
    hooks = install_stack(model, ADAPTER, control)
    return model, control, hooks


def test_compute_then_skip_reuses_the_residual(dummy):
    model, control, _ = dummy
    t = torch.zeros(1)
    # computed: 1 + 10 + 20 = 31, residual 30
    assert model(torch.tensor([[1.0]]), t).item() == 31.0
    control.mask = torch.tensor([False])
    # skipped: output = input 11 + residual 30 = 41, and no block ran
    assert model(torch.tensor([[11.0]]), t).item() == 41.0
    assert [b.calls for b in model.blocks] == [1, 1]
    assert control.ran == [("default", 1, 1), ("default", 0, 1)]


def test_sub_batch_runs_only_the_computing_rows(dummy):
    model, control, hooks = dummy
    t = torch.zeros(2)
    model(torch.tensor([[1.0], [2.0]]), t)  # both compute: residuals 30, 30
    hooks.set_residual("default", (torch.tensor([[30.0], [5.0]]),))  # pretend row 1 cached 5
    control.mask = torch.tensor([False, True])
    # row 0 skips: 100 + 30 = 130; row 1 computes: 200 + 30 = 230
    out = model(torch.tensor([[100.0], [200.0]]), t)
    assert out.flatten().tolist() == [130.0, 230.0]
    assert [b.calls for b in model.blocks] == [3, 3]  # 2 rows, then 1 row
    # row 1's residual is refreshed from its computation (30), row 0's stays
    assert hooks.residual("default")[0].flatten().tolist() == [30.0, 30.0]


def test_contexts_keep_separate_residuals(dummy):
    model, control, hooks = dummy
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    _set_cache_context(model, CacheContext("cond"))
    model(torch.tensor([[1.0]]), torch.zeros(1))
    hooks.set_residual("uncond", (torch.tensor([[7.0]]),))
    _set_cache_context(model, CacheContext("uncond"))
    control.mask = torch.tensor([False])
    assert model(torch.tensor([[1.0]]), torch.zeros(1)).item() == 8.0  # 1 + uncond residual 7
    assert hooks.residual("cond")[0].item() == 30.0


def test_remove_restores_the_original_forwards(dummy):
    model, control, _ = dummy
    control.mask = torch.tensor([False])
    model(torch.tensor([[1.0]]), torch.zeros(1))  # no residual yet: computes every row
    remove_stack(model, ADAPTER)
    assert model(torch.tensor([[1.0]]), torch.zeros(1)).item() == 31.0
    assert [b.calls for b in model.blocks] == [2, 2]


def test_unsupported_transformer_lists_the_supported_ones():
    from policies.errors import InputError
    from sencache import adapter_for

    with pytest.raises(InputError, match="WanTransformer3DModel.*supported|supported.*WanTransformer3DModel"):
        adapter_for(torch.nn.Linear(2, 2))
    assert "Dummy" not in ADAPTERS

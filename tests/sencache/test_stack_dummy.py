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


ADAPTER = BlockStackAdapter(name="dummy", transformer_class=Dummy, pipeline="", block_lists=("blocks",))


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


class TimeBlock(AddBlock):
    """hidden + k·t: the stack (1, 2) adds 3·t, so its residual is a straight line in t."""

    def forward(self, hidden_states, temb):
        self.calls += hidden_states.shape[0]
        return hidden_states + self.k * temb.view(-1, 1)


class TimeDummy(Dummy):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([TimeBlock(1.0), TimeBlock(2.0)])


class Forecasting(Fixed):
    """A controller that also hands out preset forecast weights."""

    forecasting = True

    def __init__(self):
        super().__init__()
        self.weights = None

    def forecast_weights(self, context, batch):
        return self.weights


def test_linear_forecast_extrapolates_the_last_two_residuals():
    model, control = TimeDummy(), Forecasting()
    install_stack(model, ADAPTER, control)
    model(torch.tensor([[0.0]]), torch.tensor([10.0]))  # residual 3·10 = 30
    model(torch.tensor([[0.0]]), torch.tensor([8.0]))  # residual 24, previous 30
    control.mask, control.weights = torch.tensor([False]), torch.tensor([1.0])
    # skipped at t = 6 with w = (6 − 8)/(8 − 10) = 1: 5 + 24 + 1·(24 − 30) = 23 (= 5 + 3·6, exact
    # because the residual is linear in t); plain reuse would give 5 + 24 = 29
    assert model(torch.tensor([[5.0]]), torch.tensor([6.0])).item() == 23.0
    control.weights = None
    assert model(torch.tensor([[5.0]]), torch.tensor([6.0])).item() == 29.0
    assert [b.calls for b in model.blocks] == [2, 2]


def test_forecast_in_a_sub_batch_keeps_each_rows_history():
    model, control = TimeDummy(), Forecasting()
    hooks = install_stack(model, ADAPTER, control)
    model(torch.zeros(2, 1), torch.tensor([10.0, 10.0]))  # residuals 30, 30
    control.mask = torch.tensor([True, False])
    # row 0 computes at t = 8 (residual 24, previous 30); row 1 skips, w = 0: 0 + 30
    assert model(torch.zeros(2, 1), torch.tensor([8.0, 8.0])).flatten().tolist() == [24.0, 30.0]
    # row 0's difference: its new residual 24 minus its last one 30; row 1 computed once: 0
    assert hooks.head.residual_state().delta[0].flatten().tolist() == [-6.0, 0.0]
    control.mask, control.weights = torch.tensor([False, False]), torch.tensor([1.0, 0.0])
    # row 0: 24 + 1·(24 − 30) = 18; row 1 has one computed residual only: 30
    assert model(torch.zeros(2, 1), torch.tensor([6.0, 6.0])).flatten().tolist() == [18.0, 30.0]


def test_forecast_weights_follow_the_timesteps():
    from sencache.runtime import forecast_weights

    t = torch.tensor([6.0, 6.0, 6.0, 6.0])
    ref = torch.tensor([8.0, 8.0, 8.0, 6.0])
    prev = torch.tensor([10.0, float("nan"), 8.0, 8.0])
    compute = torch.tensor([False, False, False, True])
    # row 0: (6−8)/(8−10) = 1; row 1: no earlier compute; row 2: 8 − 8 = 0 span; row 3 computes
    assert forecast_weights(t, ref, prev, compute).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_without_forecasting_no_previous_residual_is_kept(dummy):
    # plain reuse needs one residual per context: the stack must not hold a second one
    model, control, hooks = dummy
    model(torch.tensor([[1.0]]), torch.zeros(1))
    model(torch.tensor([[2.0]]), torch.zeros(1))
    assert hooks.residual("default") is not None
    assert hooks.head.residual_state().delta is None

"""Forecast "taylor" on dummy blocks whose module outputs are polynomials in t: checked by hand."""

import pytest
import torch

from sencache.adapters import BlockStackAdapter
from sencache.stack import install_stack, remove_stack
from sencache.taylor import FORECAST_HOOK, install_forecast, remove_forecast


class Attn(torch.nn.Module):
    """k·t^power per row: the "expensive" module a skipped step forecasts."""

    def __init__(self, k: float, power: int) -> None:
        super().__init__()
        self.k, self.power = k, power
        self.calls = 0

    def forward(self, hidden_states, temb):
        self.calls += hidden_states.shape[0]
        return self.k * temb.view(-1, 1) ** self.power + 0 * hidden_states


class Block(torch.nn.Module):
    """hidden + attn1(t): the addition is the "cheap part" that still runs on the current input."""

    def __init__(self, k: float, power: int) -> None:
        super().__init__()
        self.attn1 = Attn(k, power)
        self.calls = 0

    def forward(self, hidden_states, temb):
        self.calls += hidden_states.shape[0]
        return hidden_states + self.attn1(hidden_states, temb)


class Dummy(torch.nn.Module):
    """Blocks (1, 2): the stack adds 3·t^power."""

    def __init__(self, power: int = 1) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(1.0, power), Block(2.0, power)])

    def forward(self, hidden_states, timestep):
        for block in self.blocks:
            hidden_states = block(hidden_states, timestep.float())
        return hidden_states


ADAPTER = BlockStackAdapter(name="dummy", transformer_class=Dummy, pipeline="", block_lists=("blocks",),
                            forecast_modules=("attn1",))


class Controller:
    """A preset mask and row timesteps; records what ran."""

    def __init__(self):
        self.mask = None
        self.t = None
        self.ran = []
        self.module_forecast = None

    def compute_mask(self, context, batch):
        return self.mask

    def row_timesteps(self, context, batch):
        return self.t

    def stack_ran(self, context, rows, batch):
        self.ran.append((context, rows, batch))


def setup(power=1, order=1):
    """Forecasts along the timesteps the controller hands out (`row_timesteps`)."""
    model, control = Dummy(power), Controller()
    install_stack(model, ADAPTER, control)
    control.module_forecast = install_forecast(model, ADAPTER, order=order, units="timestep")
    return model, control


def step(model, control, x, t, mask=None):
    control.t, control.mask = torch.tensor(t), None if mask is None else torch.tensor(mask)
    return model(torch.tensor(x).view(-1, 1), torch.tensor(t)).flatten().tolist()


def attn_calls(model):
    return [b.attn1.calls for b in model.blocks]


def test_skipped_row_runs_the_blocks_with_forecast_modules():
    model, control = setup()
    assert step(model, control, [0.0], [10.0]) == [30.0]  # computed: 0 + 1·10 + 2·10
    assert step(model, control, [0.0], [8.0]) == [24.0]  # computed: attn outputs 8, 16
    # skipped at t = 6: attn1 of block 0 forecast 8 + (8 − 10)/(8 − 10)·(6 − 8) = 6, block 1: 12;
    # the blocks' own additions ran on the current input 5: 5 + 6 + 12 = 23
    assert step(model, control, [5.0], [6.0], [False]) == [23.0]
    assert attn_calls(model) == [2, 2]
    assert [b.calls for b in model.blocks] == [3, 3]
    # the report counts rows that computed: the skipped row ran the blocks but not their modules
    assert control.ran == [("default", 1, 1), ("default", 1, 1), ("default", 0, 1)]


def test_rows_keep_their_own_factors():
    model, control = setup()
    step(model, control, [0.0, 0.0], [10.0, 10.0])  # both compute: 30, 30
    # row 0 computes at t = 8 (24); row 1 skips with one update only: order 0, its t = 10 value 30
    assert step(model, control, [0.0, 0.0], [8.0, 8.0], [True, False]) == [24.0, 30.0]
    assert attn_calls(model) == [3, 3]  # 2 rows, then row 0 alone
    record = control.module_forecast.rows["default"]
    assert record.t_last.tolist() == [8.0, 10.0]  # row 1's state untouched by row 0's update
    factors = control.module_forecast.hooks[0].factors("default").values[0]
    assert [f.flatten().tolist() for f in factors] == [[8.0, 10.0], [1.0, 0.0]]  # row 1: still one point
    # both skip at t = 6: row 0 extrapolates its line (18), row 1 still has one point (30)
    assert step(model, control, [0.0, 0.0], [6.0, 6.0], [False, False]) == [18.0, 30.0]
    assert attn_calls(model) == [3, 3]


def test_a_row_that_never_computed_in_its_context_computes():
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    model, control = setup()
    _set_cache_context(model, CacheContext("cond"))
    step(model, control, [0.0], [10.0])
    _set_cache_context(model, CacheContext("uncond"))
    # "uncond" has no factors yet: the row computes whatever the mask says (3·8 = 24)
    assert step(model, control, [0.0], [8.0], [False]) == [24.0]
    assert control.ran[-1] == ("uncond", 1, 1)
    _set_cache_context(model, CacheContext("cond"))
    assert step(model, control, [0.0], [8.0], [False]) == [30.0]  # "cond": its own t = 10 value


@pytest.mark.parametrize("order, expected", [(1, 24.0), (2, 48.0)], ids=["order1", "order2"])
def test_order_two_is_exact_on_a_quadratic(order, expected):
    model, control = setup(power=2, order=order)
    for t in (10.0, 8.0, 6.0):
        step(model, control, [0.0], [t])
    # per unit k, F = t²: 100, 64, 36 at t = 10, 8, 6; true F(4) = 16, and the stack adds 3·F.
    # Order 1: F(6) + F[6,8]·(4 − 6) = 36 + 14·(−2) = 8, ×3 = 24.
    # Order 2 adds F[6,8,10]·(4 − 6)(4 − 8) = ((14 − 18)/(6 − 10))·8 = 8: 16, ×3 = 48 (exact)
    assert step(model, control, [0.0], [4.0], [False]) == [expected]


def test_computing_returns_the_modules_own_output_and_remove_restores():
    model, control = setup()
    x, t = torch.tensor([[0.25]]), torch.tensor([0.3])
    control.t = t
    with torch.no_grad():
        hooked = model(x, t)
    remove_forecast(model, ADAPTER)
    remove_stack(model, ADAPTER)
    assert torch.equal(model(x, t), hooked)
    assert all(FORECAST_HOOK not in getattr(b.attn1, "_diffusers_hook").hooks for b in model.blocks)


def test_an_adapter_without_forecast_modules_is_refused():
    from policies.errors import InputError

    bare = BlockStackAdapter(name="dummy", transformer_class=Dummy, pipeline="", block_lists=("blocks",))
    with pytest.raises(InputError, match="forecast_modules"):
        install_forecast(Dummy(), bare)
    with pytest.raises(InputError, match="units"):
        install_forecast(Dummy(), ADAPTER, units="sigma")


class StepController(Controller):
    """Also hands out the step index, as the runtime does (`row_steps`)."""

    def __init__(self):
        super().__init__()
        self.step = None

    def row_steps(self, context, batch):
        return torch.full((batch,), float(self.step))


@pytest.mark.parametrize("units, expected", [("step", 12.0), ("timestep", 6.0)])
def test_units_say_what_the_forecast_extrapolates_along(units, expected):
    model, control = Dummy(), StepController()
    install_stack(model, ADAPTER, control)
    control.module_forecast = install_forecast(model, ADAPTER, units=units)
    for control.step, t in ((0, 10.0), (1, 8.0)):
        step(model, control, [0.0], [t])
    control.step = 3
    # steps 0, 1 at t = 10, 8 gave 3·10, 3·8; skipped: step 3 at t = 2. Along steps:
    # 24 + (24 − 30)/(1 − 0)·(3 − 1) = 12; along timesteps: 24 + (24 − 30)/(8 − 10)·(2 − 8) = 6 = 3·2
    assert step(model, control, [0.0], [2.0], [False]) == [expected]

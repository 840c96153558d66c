"""Cached tensors: freed at the end of a call and by `remove()`; partial batches update in place;
the linear forecast keeps its precision in bfloat16."""

import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import sencache
from sencache.stack import install_stack
from tests.sencache.fixtures import policy_for, run
from tests.sencache.test_stack_dummy import ADAPTER, Dummy, Fixed, Forecasting, TimeDummy


@pytest.fixture
def wan():
    from calibration.zoo.architectures import build_pipeline

    return build_pipeline("wan")


def watch(handle, pipe):
    """Weak references to the cached residual and reference latent, taken at the last step."""
    refs = []

    def grab(module, args, kwargs):
        for context in ("cond", "uncond"):
            residual = handle._stack.residual(context)
            if residual is not None:
                refs.append(weakref.ref(residual[0]))
        traj = handle._runtime.trajectory
        if traj is not None and traj.ref_x is not None:
            refs.append(weakref.ref(traj.ref_x))

    return refs, pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)


def test_the_end_of_a_call_frees_the_cached_tensors(wan):
    handle = sencache.apply(wan, policy_for(wan.transformer, 1e9, K=1))
    refs, probe = watch(handle, wan)
    run(wan)
    probe.remove()
    gc.collect()
    assert len(refs) > 4 and all(ref() is None for ref in refs)
    assert handle.report().computed[0].tolist() == [True, False] * 4  # the report outlives them


def test_remove_frees_the_cached_tensors(wan):
    handle = sencache.apply(wan, policy_for(wan.transformer, 1e9, K=1))
    refs, probe = watch(handle, wan)

    def stop(pipe, i, t, kwargs):
        if i == 3:
            raise KeyboardInterrupt  # an interrupted call: nothing reset the hooks
        return kwargs

    with pytest.raises(KeyboardInterrupt):
        run(wan, callback_on_step_end=stop)
    probe.remove()
    gc.collect()
    alive = [ref for ref in refs if ref() is not None]
    assert alive  # the interrupted call's state is still there...
    sencache.remove(wan)
    gc.collect()
    assert all(ref() is None for ref in alive)  # ...until remove(), while the handle is still held
    assert handle is not None


class NewFullTensors(TorchDispatchMode):
    """Counts op outputs of `shape` that are new memory (an in-place op returns its own input)."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.count = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor) and tuple(o.shape) == self.shape and o.data_ptr() not in inputs:
                self.count += 1
        return out


def test_a_partial_batch_updates_the_residual_in_place():
    model, control = Dummy(), Fixed()
    hooks = install_stack(model, ADAPTER, control)
    x = torch.arange(12.0).view(4, 3)
    model(x, torch.zeros(4))  # every row computes: residual 30 everywhere
    buffer = hooks.residual("default")[0]
    control.mask = torch.tensor([True, False, True, False])
    x, t = x + 100, torch.zeros(4)
    with NewFullTensors((4, 3)) as counter:
        out = model(x, t)
    # rows 0, 2 computed (x + 100 + 30), rows 1, 3 reused (x + 100 + 30): the same numbers here
    torch.testing.assert_close(out, x + 30)
    # one new [4, 3] tensor, the output; the residual buffer is updated in place (main: 3 new ones,
    # so 6 x B on a large model once the sub-batch and the forecast are counted)
    assert counter.count == 1
    assert hooks.residual("default")[0].data_ptr() == buffer.data_ptr()
    assert [b.calls for b in model.blocks] == [6, 6]  # 4 rows, then 2


class HalfTimeDummy(TimeDummy):
    """TimeDummy that keeps the timestep in the model's dtype (bfloat16 all through)."""

    def forward(self, hidden_states, timestep):
        for block in self.blocks:
            hidden_states = block(hidden_states, timestep)
        return hidden_states


def test_the_forecast_is_summed_in_float32_in_bfloat16():
    model, control = HalfTimeDummy(), Forecasting()
    for block in model.blocks:
        block.k = 0.0625  # the stack adds 0.125·t: residual 0.25 at t = 2, 1.0 at t = 8
    install_stack(model, ADAPTER, control)
    bf = dict(dtype=torch.bfloat16)
    model(torch.zeros(1, 1, **bf), torch.tensor([2.0], **bf))
    model(torch.zeros(1, 1, **bf), torch.tensor([8.0], **bf))
    control.mask, control.weights = torch.tensor([False]), torch.tensor([1.0])
    # skipped at t = 14, w = 1: 256 + 1.0 + 1·(1.0 − 0.25) = 257.75, which rounds to 258 in bf16
    # (spacing 2 at 256). Summed in bf16 it is (256 + 1 → 256) + 0.75 → 256.
    out = model(torch.full((1, 1), 256.0, **bf), torch.tensor([14.0], **bf))
    assert out.dtype == torch.bfloat16 and out.item() == 258.0


def test_wan21_14b_720p_memory_per_sample():
    from sencache.memory import wan21_14b_720p

    m = wan21_14b_720p()
    # 81 frames -> 21 latent frames; 720x1280 / 8 -> 90x160; patch [1, 2, 2] -> 21·45·80 tokens
    assert m.tokens == 21 * 45 * 80 == 75600
    assert m.residual == 75600 * 5120 * 2  # bf16: 738.3 MiB
    assert m.latent == 16 * 21 * 90 * 160 * 2
    assert m.kept("none") == 2 * m.residual + m.latent  # cond + uncond: ~1.45 GiB
    assert m.kept("linear") == 4 * m.residual + m.latent  # + each context's difference: ~2.9 GiB

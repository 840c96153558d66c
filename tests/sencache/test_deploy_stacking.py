"""One cache per model: SenCache and diffusers' caches refuse to stack, both ways, saying what to do."""

import pytest

import sencache
from policies.errors import InputError
from tests.sencache.fixtures import policy_for


@pytest.fixture
def wan():
    from calibration.zoo.architectures import build_pipeline

    return build_pipeline("wan")


def test_diffusers_cache_on_top_of_sencache_is_refused(wan):
    from diffusers import FirstBlockCacheConfig

    sencache.apply(wan, policy_for(wan.transformer, 0.1))
    assert wan.transformer.is_cache_enabled
    with pytest.raises(ValueError, match=r"SenCache.*sencache\.remove\(pipe\)"):
        wan.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    assert "fbc_leader_block_hook" not in wan.transformer.blocks[0]._diffusers_hook.hooks
    sencache.remove(wan)
    assert not wan.transformer.is_cache_enabled
    wan.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))  # now it may


def test_sencache_on_top_of_a_diffusers_cache_is_refused(wan):
    from diffusers import FirstBlockCacheConfig

    wan.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(InputError, match=r"FirstBlockCacheConfig.*pipe\.transformer\.disable_cache\(\)"):
        sencache.apply(wan, policy_for(wan.transformer, 0.1))
    assert not hasattr(wan.transformer, "_sencache_handle")
    wan.transformer.disable_cache()
    sencache.apply(wan, policy_for(wan.transformer, 0.1))
